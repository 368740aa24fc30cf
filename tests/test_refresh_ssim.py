"""scripts/refresh_ssim.py: SSIM columns of a committed table are replaced from a rerun only when every other
value agrees; the committed run's seconds are kept."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("refresh_ssim", ROOT / "scripts" / "refresh_ssim.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _folder(path: Path, rows: list[dict]) -> Path:
    path.mkdir()
    (path / "results.json").write_text(json.dumps({"rows": rows, "features": "f", "perceptual": "p"}))
    return path


ROW = {"method": "dps", "mask": "all", "images": 4, "nfe": 10, "psnr": 20.0, "ssim": 0.8, "s_per_image": 1.0}


def test_ssim_is_refreshed_and_the_rest_kept(tmp_path):
    committed = _folder(tmp_path / "c", [ROW])
    rerun = _folder(tmp_path / "r", [{**ROW, "ssim": 0.9, "s_per_image": 7.0}])
    assert _load().refresh(committed, rerun) == []
    row = json.loads((committed / "results.json").read_text())["rows"][0]
    assert row == {**ROW, "ssim": 0.9}
    assert "0.9" in (committed / "summary.md").read_text() and (committed / "results.csv").exists()


def test_any_other_difference_stops_and_writes_nothing(tmp_path):
    committed = _folder(tmp_path / "c", [ROW])
    before = (committed / "results.json").read_text()
    rerun = _folder(tmp_path / "r", [{**ROW, "ssim": 0.9, "psnr": 20.01}])
    problems = _load().refresh(committed, rerun)
    assert problems and "psnr" in problems[0]
    assert (committed / "results.json").read_text() == before and not (committed / "summary.md").exists()
    missing = _folder(tmp_path / "m", [])
    assert _load().refresh(committed, missing)


def test_withdraw_keeps_the_values_under_legacy_keys_and_hides_them(tmp_path):
    mod = _load()
    committed = _folder(tmp_path / "c", [{**ROW, "ssim_hole": 0.7}])
    assert mod.withdraw(committed) == []
    row = json.loads((committed / "results.json").read_text())["rows"][0]
    assert row["ssim_legacy"] == 0.8 and row["ssim_hole_legacy"] == 0.7 and "ssim" not in row
    assert "ssim" not in (committed / "summary.md").read_text() and "ssim" not in (committed / "results.md").read_text()
    assert mod.withdraw(committed)                       # nothing left to withdraw: refused
    # a rerun later restores the column in the published convention, row order and other keys unchanged
    rerun = _folder(tmp_path / "r", [{**ROW, "ssim": 0.9, "ssim_hole": 0.6}])
    assert mod.refresh(committed, rerun) == []
    row = json.loads((committed / "results.json").read_text())["rows"][0]
    assert row == {**ROW, "ssim": 0.9, "ssim_hole": 0.6} and "ssim" in (committed / "summary.md").read_text()


def test_fields_the_former_code_did_not_record_are_added_but_a_dropped_field_stops(tmp_path):
    mod = _load()
    committed = _folder(tmp_path / "c", [ROW])
    rerun = _folder(tmp_path / "r", [{**ROW, "ssim": 0.9, "n_decode": 251}])
    assert mod.refresh(committed, rerun) == []
    assert json.loads((committed / "results.json").read_text())["rows"][0] == {**ROW, "ssim": 0.9, "n_decode": 251}
    dropped = _folder(tmp_path / "d", [{k: v for k, v in ROW.items() if k != "psnr"}])
    assert any("psnr" in line for line in mod.refresh(committed, dropped))
