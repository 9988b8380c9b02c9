"""The one exception type for bad user input: the CLI prints its message as one line."""


class UserError(Exception):
    """Bad input from the user (file, variable, parameter or config key named in the message)."""
