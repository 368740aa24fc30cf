"""Provenance and recovery of results folders: content hashes of inputs and prior files, atomic fsynced
writes, clean-up of temporary files, and per-index files that fail to load moved aside.

Used by `vipaint.writer` (settings.json, per-index records, resume) and `vipaint.data` (the fingerprint
of each dataset index)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["sha256_file", "sha256_bytes", "folder_hashes", "prior_folder", "atomic_write", "clean_temporary",
           "move_aside", "load_problem"]

_CACHE: dict[tuple[str, int, int], str] = {}
_TMP = re.compile(r"\.tmp\d+$")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's contents, streamed; cached per (path, size, mtime) within the process."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _CACHE[key] = h.hexdigest()
    return _CACHE[key]


def folder_hashes(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder` (dot-folders such as .cache left out)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            out[rel.as_posix()] = sha256_file(p)
    return out


def prior_folder(path: str) -> Path | None:
    """The local folder holding a prior's files: `path` itself, or the cached snapshot of a Hub id (None
    when it cannot be found without a download)."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    if local.exists() or path.startswith(("<", ".", "/", "~")):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, local_files_only=True))
    except Exception:
        return None


def _fsync(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` to a temporary file beside `path`, fsync it, move it into place and fsync the folder:
    readers never see half a file, and a finished file survives a crash of the machine."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    write(tmp)
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent, directory=True)


def clean_temporary(folder: Path) -> list[Path]:
    """Delete the temporary files (`*.tmp<pid>`) an interrupted run left under `folder`; returns them."""
    gone = []
    for p in folder.rglob("*.tmp*"):
        if p.is_file() and _TMP.search(p.name):
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def move_aside(path: Path, root: Path) -> Path:
    """Move a damaged file to `root`/corrupt/ (kept for inspection, out of the results)."""
    dest = root / "corrupt" / f"{path.parent.name}-{path.name}.{time.strftime('%Y%m%dT%H%M%S')}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, dest)
    return dest


def load_problem(path: Path) -> str | None:
    """Why a per-index file cannot be used (None: it loads): a .json that is not a JSON object, a .npz
    whose archive is truncated (its directory, at the end, is read; the data are not)."""
    try:
        if path.suffix == ".json":
            if not isinstance(json.loads(path.read_text()), dict):
                return "not a JSON object"
        elif path.suffix == ".npz":
            with zipfile.ZipFile(path) as z:
                if not z.namelist():
                    return "an empty archive"
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return None
