"""Errors a user can fix. The CLI prints them as one line, never as a traceback."""


class PacosError(Exception):
    """A problem with the user's input, files or environment, explained in one line."""
