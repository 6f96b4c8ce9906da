"""User-facing errors: each message says what is wrong and how to fix it, in one line.

The CLI prints these as `dpl: error: <message>` and exits non-zero; anything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
    """Bad input from the user (settings, files, data, environment)."""


class DataError(UserError):
    """A dataset is missing, incomplete or corrupt; the message names the file."""
