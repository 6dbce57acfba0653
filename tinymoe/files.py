"""Writing files atomically: a reader never sees a half-written file."""

import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside ``path``; on success it replaces ``path`` in one step.

    On an error the temporary file is removed and ``path`` is left as it was.

    Example:
        >>> with atomic_path("figure.png") as tmp:
        ...     fig.savefig(tmp, format="png")
    """
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"Output path {path!r} is a folder, not a file.")
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    handle, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    os.close(handle)
    try:
        yield tmp
        # mkstemp makes the file private (0600); give it the mode a plain open() would (or
        # the mode of the file it replaces).
        os.chmod(tmp, os.stat(path).st_mode & 0o777 if os.path.exists(path) else
                 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path, data):
    """Writes ``data`` as indented JSON, atomically.

    Example:
        >>> write_json("runs/summary.json", {"val_accuracy": 0.98})
    """
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
