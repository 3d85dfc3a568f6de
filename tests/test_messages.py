"""The one line CLI errors and start-up refusals quote from a library's exception."""

from services.messages import message_line


def test_the_first_non_blank_line_is_quoted_and_cut_to_the_limit():
    error = RuntimeError("\n  Error(s) in loading state_dict:  \n\tMissing key(s): body.0.weight\n")
    assert message_line(error) == "Error(s) in loading state_dict:"
    assert message_line(error, last=True) == "Missing key(s): body.0.weight"
    assert message_line(ValueError("x" * 500), limit=40) == "x" * 40


def test_an_exception_without_a_message_is_named_by_its_type():
    assert message_line(RuntimeError()) == "RuntimeError"
    assert message_line(OSError("  \n ")) == "OSError"
