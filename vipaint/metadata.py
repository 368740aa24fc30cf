"""`metadata.jsonl` of an image folder: one JSON object per line, `{"file_name": ..., "mask_file_name": ...,
"class_id": ..., "prompt": ..., "negative_prompt": ...}` (all but `file_name` optional), checked before
`datasets` reads it (`check_metadata`)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["check_metadata", "TEXT_COLUMNS"]

#: text columns of a metadata row: the prompt of a text-conditioned prior and its negative prompt
TEXT_COLUMNS = ("prompt", "negative_prompt")


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
        for col in TEXT_COLUMNS:
            if row.get(col) is not None and not isinstance(row[col], str):
                raise ValueError(f"{where}: {col} must be a string, got {row[col]!r}")
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
