"""Where the images of `vipaint.data` come from: an image folder (checked `metadata.jsonl`) or a Hub dataset."""

from __future__ import annotations

from pathlib import Path

from vipaint.metadata import check_metadata

__all__ = ["DatasetNotFoundError", "check_metadata", "load_table"]


class DatasetNotFoundError(FileNotFoundError):
    """The configured dataset is not available on this machine."""


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
