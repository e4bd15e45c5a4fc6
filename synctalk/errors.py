"""User-facing errors: the CLI prints their message on one line and exits non-zero, no traceback."""


class SyncTalkError(Exception):
    """An error caused by the user's input or environment, with a message that says what to do."""


class InputError(SyncTalkError):
    """The input file is missing, unreadable, corrupt, or unsuitable (no face, no audio, ...)."""


class MissingWeightsError(SyncTalkError):
    """A model needs weights that are not available offline; the message says which file to supply."""


class StageError(SyncTalkError):
    """A pipeline stage could not produce a valid result."""
