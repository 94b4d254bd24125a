"""The base of every error that is the user's to fix (a setting, a data row, a file, a run directory), and the
error of an invalid configuration.

The command line prints a `UserError` as one line, ``atesd: error: <message>``, and exits with status 2; any
other exception is a bug in atesd and keeps its traceback. The message names the file, row, field or setting
and says what to do.
"""


class UserError(Exception):
    """A failure the user can fix; its message says where and how."""


class ConfigError(UserError, ValueError):
    """The configuration is invalid; the message names the file and the key (raised from `atesd.config`, and
    from `atesd.files` for YAML that cannot be read)."""
