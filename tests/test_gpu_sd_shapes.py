"""benchmarks/gpu_sd_shapes.py on tiny stand-ins of SD2-base and SD3.5-medium, on the CPU."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_sd_shapes_benchmark_tiny(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_sd_shapes
    finally:
        sys.path.pop(0)
    out = tmp_path / "bench.json"
    gpu_sd_shapes.main(["--tiny", "--device", "cpu", "--output", str(out), "--iterations", "1", "--refine-steps", "1",
                        "--samples", "1", "--decode-chunk", "1", "--gradient-checkpointing"])
    data = json.loads(out.read_text())
    rows = {r["model"]: r for r in data["results"]}
    assert set(rows) == {"sd2_base", "sd35_medium"}
    assert rows["sd2_base"]["path"] == "vp" and rows["sd35_medium"]["path"] == "flow" and rows["sd35_medium"]["t5"]
    for r in rows.values():
        assert r["text_s"] > 0 and r["fit_s"] > 0 and r["refine_s"] > 0 and r["samples_finite"]


def test_real_shapes_have_the_published_parameter_counts():
    """Built on the meta device (no memory): the UNet / MMDiT and text encoders of the real checkpoints."""
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_sd_shapes
    finally:
        sys.path.pop(0)
    counts = {}
    for name in gpu_sd_shapes.MODELS:
        with torch.device("meta"):
            den, _, _, _, encs = gpu_sd_shapes.build_models(name, False, False)
        counts[name] = [round(sum(p.numel() for p in m.parameters()) / 1e6) for m in (den, *encs)]
    assert counts == {"sd2_base": [866, 340], "sd35_medium": [2243, 124, 695, 4762]}
