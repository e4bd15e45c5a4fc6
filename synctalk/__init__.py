"""synctalk: an offline, fast re-implementation of SyncTalk talking-head synthesis."""

__version__ = "0.1.0"

# Version of the subject directory format written by `synctalk prepare` (see docs/subject-format.md).
SUBJECT_FORMAT_VERSION = 1
