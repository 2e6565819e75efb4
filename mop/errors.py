"""The one exception type a user can cause; the CLI prints it as a single line and exits non-zero."""


class MopError(Exception):
    """A problem with the user's input (path, column, config, export...), stated with what was expected."""
