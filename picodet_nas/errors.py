"""Errors that the command line turns into one line on stderr and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a path, a file, a flag value. Never a bug in this package.

    The message must be one line that names the file or field and what was expected.
    """

    exit_code = 2


class ArchError(UserError):
    """An architecture description (preset name, YAML file, field value) is invalid."""


class DataError(UserError):
    """A dataset folder, annotation file or image is missing or malformed."""


class SpaceError(UserError):
    """A search space file is malformed, or a file belongs to another space."""


class LatencyTableError(UserError):
    """A latency table is corrupt or does not match the space / input size in use."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, or belongs to another space or architecture."""
