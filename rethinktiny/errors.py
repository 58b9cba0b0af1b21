"""The one exception type a user sees as a one-line message instead of a traceback."""


class UserError(Exception):
    """Bad input or a refused action: the CLI prints `error: <message>` and exits with status 2.

    The message must name the file, key or flag at fault, so it can be fixed without a traceback.
    """
