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


EXIT_PREEMPTED = 75  # the exit status of a run stopped by SIGTERM/SIGINT after saving (batch schedulers requeue)


class Preempted(Exception):
    """A run stopped by a signal after saving its state; ``fgvc train --resume auto`` continues it. Not an
    error: the CLI prints the one line and exits with :data:`EXIT_PREEMPTED`."""

    def __init__(self, path):
        super().__init__(f"stopped by a signal; state saved to {path}; continue with --resume auto")
        self.path = path
