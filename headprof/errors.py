"""The one exception type the CLI turns into a one-line message instead of a traceback."""


class HeadprofError(Exception):
    """Bad input or an unusable environment: the message is written for the user, not for a debugger."""
