"""User-facing errors.

Anything raised as an :class:`FgvcError` is a problem the user can fix (a bad config key, a missing
dataset file, a corrupt image). The CLI prints it as one line, without a traceback.
"""


class FgvcError(Exception):
    """Base class of the errors the CLI reports as one clear line."""


class ConfigError(FgvcError):
    """An unknown key, a wrong type, or a combination of settings that cannot work."""


class DataError(FgvcError):
    """A missing or malformed dataset file, a bad annotation or an unreadable image."""


class CheckpointError(FgvcError):
    """A checkpoint that is missing, incomplete or does not match the run."""


class TrainingError(FgvcError):
    """A run that stopped: a non-finite loss, out of memory, too many bad samples."""
