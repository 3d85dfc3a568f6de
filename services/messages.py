"""One line from an exception, for CLI errors and start-up refusals that quote what a library said."""

from __future__ import annotations


def message_line(error: BaseException, limit: int = 200, last: bool = False) -> str:
    """The first (or last) non-blank line of the error's message, at most `limit` characters; the
    exception's type name when the message is empty."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return (lines[-1] if last else lines[0])[:limit]
