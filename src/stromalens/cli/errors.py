"""User errors as one line: what went wrong, with which path, and what to do.

The root app (:func:`stromalens.cli.app.main`) prints :func:`error_line` of every user error and
exits 1. An operating-system error (``OSError``: a missing file, a folder where a file is
expected, a file where a folder is expected, a permission, a full disk) is said in words with the
path it concerns, never as Python's ``[Errno 20] Not a directory: 'out/patients'``.
"""

from __future__ import annotations

import errno
from pathlib import Path

#: What each errno means for the user; ``{path}`` is the path the error names.
_OS_MESSAGES: dict[int, str] = {
    errno.ENOENT: "{path}: not found",
    errno.EISDIR: "{path}: is a folder; a file is expected here",
    errno.EACCES: "{path}: permission denied",
    errno.EPERM: "{path}: operation not permitted",
    errno.EROFS: "{path}: the file system is read-only",
    errno.ENOSPC: "{path}: no space left on the device; free some space or choose another "
    "--out, then run again (finished work is kept)",
    errno.EDQUOT: "{path}: disk quota exceeded; free some space or choose another --out",
    errno.ENAMETOOLONG: "{path}: the name is too long for the file system",
}


def os_error_line(exc: OSError) -> str:
    """One line for an ``OSError``, naming its path.

    An error raised with a message of its own (``FileNotFoundError("slide not found: x")``, no
    ``filename``) keeps that message; one from the operating system is put in words:

    >>> os_error_line(IsADirectoryError(21, "Is a directory", "cohort"))
    'cohort: is a folder; a file is expected here'
    """
    if exc.filename is None:
        if exc.errno == errno.ENOSPC:
            return "no space left on the device; free some space or choose another --out"
        return str(exc)
    path = Path(str(exc.filename))
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        # `out/patients` is "not a directory" because `out` is a file: name the file
        blocker = _file_in_the_way(path)
        if blocker is not None:
            return f"{blocker}: is a file; a folder is expected here"
        if exc.errno == errno.EEXIST:
            return f"{path}: already exists"
    template = _OS_MESSAGES.get(exc.errno)
    if template is None:
        return f"{path}: {exc.strerror or exc}"
    return template.format(path=path)


def _file_in_the_way(path: Path) -> Path | None:
    """``path`` or its nearest ancestor that exists, if that is a file (not a folder)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate if not candidate.is_dir() else None
    return None
