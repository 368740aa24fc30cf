"""Scale-out (docs/scaling.md): two "nodes" × one process each, launched by torchrun on localhost with
gloo, write per-index results identical to one process; a results folder survives SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_cli import _config, _samples

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    # one thread per process in every run: CPU kernels reduce in a thread-count-dependent order
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    for key in ("MASTER_PORT", "MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK"):
        env.pop(key, None)
    return env


def _predict(cfg: Path, *extra: str) -> list[str]:
    return ["-m", "vipaint.cli", "predict", "--config", str(cfg), *extra]


@pytest.mark.ddp
@pytest.mark.slow
def test_torchrun_two_nodes_match_one_process(tmp_path, tiny_pixel_prior, tiny_imagefolder):
    """`torchrun --nnodes 2 --nproc-per-node 1` (two node ranks on localhost, gloo) gives the per-index
    samples and metrics of a one-process run, bit for bit."""
    one, two = tmp_path / "one", tmp_path / "two"
    cfg1 = _config(tmp_path, tiny_pixel_prior, tiny_imagefolder, one, batch_size=1, fid=False)
    proc = subprocess.run([sys.executable, *_predict(cfg1)], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg2 = _config(tmp_path, tiny_pixel_prior, tiny_imagefolder, two, batch_size=1, fid=False)
    port = _free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                               "--node-rank", str(r), "--master-addr", "127.0.0.1", "--master-port", str(port),
                               *_predict(cfg2, "--trainer.num_nodes=2", "--trainer.devices=1",
                                         "--trainer.strategy=ddp")],
                              cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    outs = [n.communicate(timeout=300) for n in nodes]
    for n, (_, err) in zip(nodes, outs, strict=True):
        assert n.returncode == 0, err[-3000:]
    a, b = _samples(one), _samples(two)
    assert a.keys() == b.keys() and len(a) == 6
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    for k in a:
        ra = (one / "metrics" / f"{k}.json").read_text()
        rb = (two / "metrics" / f"{k}.json").read_text()
        assert ra == rb
    assert (one / "metrics.json").read_text() == (two / "metrics.json").read_text()


@pytest.mark.slow
def test_sigkill_at_several_moments_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_pixel_prior,
                                                                             tiny_imagefolder):
    """Acceptance of issue 22: a run killed by SIGKILL at several moments, each time resumed, ends with the
    per-index results of a run never interrupted."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    cfg_ref = _config(tmp_path, tiny_pixel_prior, tiny_imagefolder, ref, batch_size=1, fid=False)
    proc = subprocess.run([sys.executable, *_predict(cfg_ref)], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = _config(tmp_path, tiny_pixel_prior, tiny_imagefolder, run, batch_size=1, fid=False)
    # killed: during start-up, then as soon as more than 1 and 4 indices of the 6 are done (each run
    # resumes the previous one, so every kill lands inside the computing of a later index)
    alive = []
    for done_before_kill in (None, 1, 4):
        p = subprocess.Popen([sys.executable, *_predict(cfg)], cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 240
        while p.poll() is None and time.monotonic() < deadline:
            n = len(list((run / "metrics").glob("*.json"))) if (run / "metrics").exists() else 0
            if (done_before_kill is None and time.monotonic() > deadline - 238) or (
                    done_before_kill is not None and n > done_before_kill):
                break
            time.sleep(0.05)
        alive.append(p.poll() is None)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
    assert sum(alive) >= 2, "the runs ended before they could be killed"
    proc = subprocess.run([sys.executable, *_predict(cfg)], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _samples(ref), _samples(run)
    assert a.keys() == b.keys() and len(a) == 6
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not list(run.rglob("*.tmp*"))
