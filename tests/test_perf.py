import os
import subprocess
import sys

from softlabels.perf import allocator_tuned, tune_allocator


def test_tune_allocator_is_idempotent_and_reports_its_state():
    first = tune_allocator()
    assert tune_allocator() == first == allocator_tuned()
    if sys.platform.startswith("linux") and os.environ.get("SOFTLABELS_ALLOCATOR") != "system":
        assert first  # glibc: mallopt accepted the settings


def test_allocator_opt_out_by_environment():
    code = "from softlabels.perf import tune_allocator; print(tune_allocator())"
    env = dict(os.environ, SOFTLABELS_ALLOCATOR="system")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
