"""Methods of a benchmark spec whose settings are identical share one run.

A leaderboard spec names every method twice, tuned and published; when the tuning chooses the published
setting (configuration 0) both entries resolve to the same method and options, and since every seed comes
from the global seed and the dataset index, a second run would repeat the first to the last digit. Such a
method's folder `<out>/<name>` becomes a relative link to its twin's folder, so every reader (report,
bootstrap, leaderboard) finds the same files, and `results.md` says which rows are one run.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["link_shared_runs", "setting_key", "shared_run_of", "shared_run_targets"]


def setting_key(name: str, opts: dict) -> str:
    """The resolved setting of a spec entry (`method` defaults to the entry's name) as a canonical string."""
    opts = dict(opts)
    return json.dumps({"method": opts.pop("method", name), **opts}, sort_keys=True, default=str)


def _n_results(folder: Path) -> int:
    return len(list((folder / "metrics").glob("*.json")))


def shared_run_targets(resolved: dict[str, dict], out: Path) -> dict[str, str]:
    """{name: twin whose run it shares} over the resolved entries of a spec (in spec order).

    Among entries with one setting, the run is the real folder with the most results (the first in spec
    order when none has any); an entry that already has a real folder of its own keeps it (two runs made
    before this rule, or on purpose), so only entries with no folder, or a link, are mapped."""
    groups: dict[str, list[str]] = {}
    for name, opts in resolved.items():
        groups.setdefault(setting_key(name, opts), []).append(name)
    targets: dict[str, str] = {}
    for names in groups.values():
        if len(names) < 2:
            continue
        real = [n for n in names if (out / n).is_dir() and not (out / n).is_symlink()]
        target = max(real, key=lambda n: _n_results(out / n)) if real else names[0]
        for n in names:
            if n != target and (not (out / n).exists() or (out / n).is_symlink()):
                targets[n] = target
    return targets


def link_shared_runs(targets: dict[str, str], out: Path) -> None:
    """Make `<out>/<name>` a relative link to `<out>/<twin>` for each entry of `targets` (an existing link to
    another folder is replaced)."""
    for name, target in targets.items():
        link = out / name
        if link.is_symlink():
            if Path(link.readlink()).name == target:
                continue
            link.unlink()
        (out / target).mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=True)
        print(f"{name}: same method and options as {target}; it shares that run ({link} -> {target})")


def shared_run_of(method_dir: Path) -> str | None:
    """The twin whose run a method's folder links to, or None for a folder of its own."""
    method_dir = Path(method_dir)
    return Path(method_dir.readlink()).name if method_dir.is_symlink() else None
