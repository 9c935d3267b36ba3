"""The two kinds of user-facing failure: the CLI turns each into one message and a non-zero exit status."""


class DataError(RuntimeError):
    """A data file or folder is missing, corrupt or cannot be fetched; the message says which and how to fix it."""


class ConfigError(ValueError):
    """An option's value cannot work; raised before any work starts."""


def report(error: Exception) -> int:
    """Say a ConfigError or DataError in one line and return its exit status (2 for options, 1 for data)."""
    from vgg_lightning.messages import log

    log.error(f"error: {error}")
    return 2 if isinstance(error, ConfigError) else 1
