"""benchmarks/gpu_paper_shapes.py on tiny stand-ins of the paper's latent priors, on the CPU."""

import json
import sys

import pytest
from latent_folders import ROOT


@pytest.mark.slow
def test_gpu_paper_shapes_benchmark_tiny(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_paper_shapes
    finally:
        sys.path.pop(0)
    out = tmp_path / "bench.json"
    rows = gpu_paper_shapes.main(["--tiny", "--device", "cpu", "--output", str(out)])
    data = json.loads(out.read_text())
    assert {r["model"] for r in data["results"]} == {"lsun_church_ldm", "cin256_v2"}
    assert len(rows) == 2
    for r in data["results"]:
        assert r["fit_s"] > 0 and r["refine_s"] > 0 and r["samples_finite"]
