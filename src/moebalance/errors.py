"""The one exception type a stage raises for bad input, shared by every module."""


class UsageError(Exception):
    """Bad input or option: reported as one line naming the file or option, exit status 2."""
