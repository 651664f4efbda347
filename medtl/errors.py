"""The one error base the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from a user: a value, a file, a folder. The message is one line naming it."""
