"""Where the images of `vipaint.data` come from: an image folder (checked `metadata.jsonl`) or a Hub dataset."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["DatasetNotFoundError", "check_metadata", "load_table"]


class DatasetNotFoundError(FileNotFoundError):
    """The configured dataset is not available on this machine."""


def _inside(folder: Path, name: str) -> bool:
    """Whether the relative path `name` stays inside `folder` (no absolute path, no `..` out of it)."""
    if Path(name).is_absolute():
        return False
    return (folder / name).resolve().is_relative_to(folder.resolve())


def check_metadata(meta: Path) -> None:
    """Check an image folder's `metadata.jsonl` before `datasets` reads it, with errors naming the file and
    line: not empty, one JSON object per line with a `file_name`, paths inside the folder and existing,
    no file listed twice."""
    folder = meta.parent
    first: dict[str, int] = {}
    lines = meta.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{meta}, line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: malformed JSON ({err.msg} at column {err.colno}); write one JSON object "
                             'per line, e.g. {"file_name": "000.png", "mask_file_name": "masks/000.png"}') from None
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
            raise ValueError(f'{where}: expected a JSON object with a "file_name" string, got {line.strip()[:100]}')
        for col in ("file_name", "mask_file_name"):
            name = row.get(col)
            if name is None:
                continue
            if not isinstance(name, str) or not _inside(folder, name):
                raise ValueError(f"{where}: {col} {name!r} points outside the folder {folder}; give a path relative "
                                 "to the folder, inside it")
            if not (folder / name).is_file():
                raise ValueError(f"{where}: {col} {name!r} does not exist in {folder}")
        key = str(Path(row["file_name"]))
        if key in first:
            raise ValueError(f"{where}: file_name {row['file_name']!r} is listed again (first on line {first[key]}); "
                             "each image must appear once")
        first[key] = n
    if not first:
        raise ValueError(f"{meta} lists no images; write one JSON object per line "
                         '({"file_name": ..., "mask_file_name": ...}) or delete the file')


def _load_hub(datasets, source: str, split: str, cache_dir: str | None):
    if source.startswith((".", "/", "~", "data/")):
        raise DatasetNotFoundError(
            f"dataset folder '{source}' does not exist. Create it with images (and an optional "
            f"metadata.jsonl with mask_file_name/class_id columns), or set data.source.")
    try:
        return datasets.load_dataset(source, split=split, cache_dir=cache_dir)
    except Exception as err:  # datasets raises many types offline (ConnectionError, FileNotFoundError...)
        raise DatasetNotFoundError(
            f"dataset '{source}' could not be loaded ({type(err).__name__}: {str(err).splitlines()[0][:300]}).\n"
            f"  * Hub datasets need a network or a filled cache ($HF_HOME / HF_DATASETS_CACHE); with "
            f"HF_DATASETS_OFFLINE=1 nothing is downloaded.\n  * Or download the images elsewhere, copy "
            f"them into a folder and set data.source to that folder.") from err


def load_table(source: str, split: str, cache_dir: str | None):
    """The `datasets` table of `split` of an image folder or Hub dataset, image columns undecoded."""
    import datasets

    local = Path(source).expanduser()
    if local.is_dir():
        for meta in sorted(local.rglob("metadata.jsonl")):
            check_metadata(meta)
    if local.exists():
        try:
            ds = datasets.load_dataset("imagefolder", data_dir=str(local), cache_dir=cache_dir)
        except Exception as err:
            raise ValueError(f"image folder '{source}' could not be loaded ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:300] if str(err) else ''})") from err
    else:
        ds = {split: _load_hub(datasets, source, split, cache_dir)}   # only that split
    if split not in ds:
        if len(ds) == 1:
            split = next(iter(ds))
        else:
            raise ValueError(f"dataset '{source}' has splits {list(ds)}, not '{split}'")
    part = ds[split]
    for col in list(part.features):
        feat = part.features[col]
        if type(feat).__name__ == "Image":
            part = part.cast_column(col, datasets.Image(decode=False))
    return part
