"""
ChartWiz's own exceptions: what a user gave that cannot be used (a path, an option, a file's content, a checkpoint).

The `chartwiz` command prints these as one line with exit status 2; any other exception is a defect, in ChartWiz or
in a library, and keeps its traceback (`CHARTWIZ_DEBUG=1` or `--debug` shows the traceback of these too). Each type
is also the built-in exception it stands for, as `datasets`' errors are, so `except ValueError` still catches them.
"""


class ChartWizError(Exception):
    """A problem with what the user gave ChartWiz; the message says what and where."""


class ChartWizValueError(ChartWizError, ValueError):
    """A value, an option or the content of a file that ChartWiz cannot use."""


class ChartWizOSError(ChartWizError, OSError):
    """A file or folder that is there but cannot be used (no `config.json`, truncated weights...)."""


class ChartWizFileNotFoundError(ChartWizOSError, FileNotFoundError):
    """A file or folder the user named that is not there."""


__all__ = ["ChartWizError", "ChartWizFileNotFoundError", "ChartWizOSError", "ChartWizValueError"]
