"""The one base class of errors that reach the user as a single line (the CLI prints it and exits non-zero)."""


class DigitsError(Exception):
    """An error whose message is one self-contained line for the user; no traceback is shown for it."""

    exit_code = 1
