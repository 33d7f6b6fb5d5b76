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


def did_you_mean(name: str, known, *, list_known: bool = True) -> str:
    """The tail of an 'unknown NAME' message: ` (did you mean 'X'?)` naming the closest known
    name, else ` (known: A, B, ...)` (or nothing, with `list_known=False`)."""
    import difflib

    known = sorted(str(k) for k in known)
    close = difflib.get_close_matches(str(name), known, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known: {', '.join(known)})" if list_known and known else ""
