"""Errors a user can fix. The CLI prints them as one line, never as a traceback."""


class PacosError(Exception):
    """A problem with the user's input, files or environment, explained in one line."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (or its type name when it has none), for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
