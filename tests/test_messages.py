"""The one line CLI errors, start-up refusals and the server log quote from a library's exception."""

import logging
import sys

import pytest
from bentoml.exceptions import InternalServerError, InvalidArgument
from pydantic import BaseModel, ValidationError

from services.conventions import BENTOML_ENDPOINT_LOGGER, ClientErrorsInOneLine
from services.messages import message_line


def test_the_first_non_blank_line_is_quoted_and_cut_to_the_limit():
    error = RuntimeError("\n  Error(s) in loading state_dict:  \n\tMissing key(s): body.0.weight\n")
    assert message_line(error) == "Error(s) in loading state_dict:"
    assert message_line(error, last=True) == "Missing key(s): body.0.weight"
    assert message_line(ValueError("x" * 500), limit=40) == "x" * 40


def test_an_exception_without_a_message_is_named_by_its_type():
    assert message_line(RuntimeError()) == "RuntimeError"
    assert message_line(OSError("  \n ")) == "OSError"


def record_of(exception: BaseException) -> logging.LogRecord:
    """The record BentoML's log_exception makes of an endpoint's exception."""
    try:
        raise exception
    except BaseException:
        return logging.LogRecord(BENTOML_ENDPOINT_LOGGER, logging.ERROR, __file__, 1, "Exception on %s [%s]",
                                 ("/siamese/predict", "POST"), sys.exc_info())


def test_a_client_error_is_logged_as_one_warning_line_without_traceback():
    record = record_of(InvalidArgument("image_b: not a recognised image format"))
    assert ClientErrorsInOneLine().filter(record)
    assert (record.levelno, record.exc_info) == (logging.WARNING, None)
    assert record.getMessage() == "Client error 400 on /siamese/predict [POST]: image_b: not a recognised image format"
    assert "Traceback" not in logging.Formatter().format(record)


def test_a_validation_error_is_logged_naming_its_fields():
    class Penguin(BaseModel):
        bill_length_mm: float

    with pytest.raises(ValidationError) as raised:
        Penguin.model_validate({"bill_length_mm": "long"})
    record = record_of(raised.value)
    ClientErrorsInOneLine().filter(record)
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("Client error 400 on /siamese/predict [POST]: bill_length_mm: ")


@pytest.mark.parametrize("exception", [RuntimeError("session failed"), InternalServerError("broken")])
def test_a_server_error_keeps_its_error_level_and_traceback(exception):
    record = record_of(exception)
    assert ClientErrorsInOneLine().filter(record)
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert record.getMessage() == "Exception on /siamese/predict [POST]"
    assert "Traceback" in logging.Formatter().format(record)
