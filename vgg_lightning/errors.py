"""The two kinds of user-facing failure: the CLI turns each into one message and a non-zero exit status."""


class DataError(RuntimeError):
    """A data file or folder is missing, corrupt or cannot be fetched; the message says which and how to fix it."""


class ConfigError(ValueError):
    """An option's value cannot work; raised before any work starts."""
