"""The one exception type that reaches the user as a one-line message, never a traceback."""


class TledgeError(Exception):
    """A problem the user can fix. The message names the problem and the fix, on one line."""


class Interrupted(TledgeError):
    """Ctrl-C during a long job; what it finished is saved. The CLI exits 130."""
