"""The exception types the CLI turns into a one-line message instead of a traceback, and the notice type."""


class HeadprofError(Exception):
    """Bad input or an unusable environment: the message is written for the user, not for a debugger."""

    exit_code = 1


class UsageError(HeadprofError):
    """A malformed option value headprof parses itself (`--lengths abc`): exit 2, like typer's usage errors."""

    exit_code = 2


class HeadprofWarning(UserWarning):
    """Something the user should know that does not stop the command; the CLI prints it as a `notice:` line."""
