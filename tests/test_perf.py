import os
import subprocess
import sys

from softlabels.engine.runtime import allocator_tuned, tune_allocator


def test_tune_allocator_is_idempotent_and_reports_its_state():
    first = tune_allocator()
    assert tune_allocator() == first == allocator_tuned()
    if sys.platform.startswith("linux") and os.environ.get("SOFTLABELS_ALLOCATOR") != "system":
        assert first  # glibc: mallopt accepted the settings


def test_allocator_opt_out_by_environment():
    code = "from softlabels.engine.runtime import tune_allocator; print(tune_allocator())"
    env = dict(os.environ, SOFTLABELS_ALLOCATOR="system")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_without_a_cxx_compiler_auto_compile_falls_back_to_eager(monkeypatch):
    import warnings

    import torch

    import softlabels.engine.runtime as perf
    from softlabels.engine.runtime import resolve_compile

    monkeypatch.setattr(perf, "_state", {})
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(perf.shutil, "which", lambda name: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not resolve_compile("auto", torch.device("cpu"), total_steps=10**6)
    assert any("C++ compiler" in str(w.message) for w in caught)
    assert resolve_compile("on", torch.device("cpu"), total_steps=1)  # an explicit request is honoured
    monkeypatch.setattr(perf.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(perf, "_state", {})
    assert resolve_compile("auto", torch.device("cpu"), total_steps=10**6)
