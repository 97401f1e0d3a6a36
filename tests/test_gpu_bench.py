"""benchmarks/gpu.py: its reference loop is the reference loop, and its CPU smoke run measures every line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu import cifar_like, ref_train_on  # noqa: E402
from reference import ref_train  # noqa: E402


def test_device_reference_loop_is_the_reference_loop_on_cpu() -> None:
    # same seed, same images: the on-device loop draws what reference.ref_train draws, so equal weights
    x, y = cifar_like(2, torch.device("cpu"))
    a = ref_train_on(torch.device("cpu"), x, y, width=8, epochs=3, seed=5)
    b = ref_train(x, y, width=8, epochs=3, seed=5)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    untrained = ref_train_on(torch.device("cpu"), x, y, width=8, epochs=1, seed=5)
    assert not torch.equal(untrained.state_dict()["classifier.weight"], a.state_dict()["classifier.weight"])


def test_cpu_smoke_measures_every_line() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--cpu-smoke"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    results = [ln for ln in lines if ln.startswith("  ")]
    # (a) 2 IPCs, (b) 1 IPC x 2 stacks, (c) one ResNet line, (d) one CPU line
    assert len(results) == 6, out.stdout
    assert "unmeasured" not in out.stdout
    assert all(re.search(r"\d+\.\d+ ms", ln) for ln in results), out.stdout
    assert sum("ratio" in ln for ln in results) == 2 and sum("x N" in ln for ln in results) == 3


def test_budget_prints_unmeasured_instead_of_numbers() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--cpu-smoke", "--budget", "0"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    results = [ln for ln in out.stdout.splitlines() if ln.startswith("  ")]
    assert results and all("unmeasured (time budget" in ln for ln in results), out.stdout
    assert not any(re.search(r"\d ms", ln) for ln in results)
