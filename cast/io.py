"""Atomic outputs and clear errors for bad files."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError

__all__ = ["InputError", "write_json", "read_json", "atomic_dir"]


def _modes() -> tuple[int, int]:
    """mkstemp/mkdtemp create 0600/0700 (private) temporaries; outputs get the modes any other file
    or folder would (0666/0777 minus the umask), so a shared results tree stays readable by the group."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask, 0o777 & ~umask


_FILE_MODE, _DIR_MODE = _modes()


def write_json(path: str | Path, obj) -> None:
    """Write JSON atomically: temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON: {e}") from None


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary sibling folder; on success it replaces `path` in one rename.
    An interrupted writer leaves only a hidden .tmp folder, never a complete-looking output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        for sub in tmp.rglob("*"):  # writers (safetensors among them) may create private 0600 files
            os.chmod(sub, _DIR_MODE if sub.is_dir() else _FILE_MODE)
        os.chmod(tmp, _DIR_MODE)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
