"""End-to-end on real Fashion-MNIST (slow; run in CI). Skipped when the data is not installed."""

import numpy as np
import pytest

from softlabels.cli import main
from softlabels.data import load_dataset
from softlabels.sets.compressed import CompressedSet
from softlabels.validation import DataNotFoundError

try:
    load_dataset("fashion-mnist")
    HAVE = True
except DataNotFoundError:
    HAVE = False

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not HAVE, reason="Fashion-MNIST not installed")]


def test_smoke_run_distill_evaluate(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--preset", "smoke", "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "soft vs hard labels" in text
    report = (out / "report.md").read_text()
    assert "| 1 | hard |" in report and "| 5 | soft |" in report and (out / "baseline.png").exists()
    # every hard/soft cell is stored with its protocol and bytes
    assert main(["results", "--out", str(out), "--csv", str(tmp_path / "r.csv")]) == 0
    assert len((tmp_path / "r.csv").read_text().splitlines()) > 8

    # distill a set with the same (reused) expert, then evaluate it and a user-made set
    s = tmp_path / "ipc2.safetensors"
    assert (
        main(
            [
                "distill",
                "--preset",
                "smoke",
                "--out",
                str(out),
                "--quiet",
                "--ipc",
                "2",
                "--expert-epoch",
                "2",
                "--codec",
                "fp16",
                "-o",
                str(s),
            ]
        )
        == 0
    )
    cset = CompressedSet.load(s)
    assert len(cset) == 20 and cset.manifest["label_codec"] == "fp16"
    assert main(["evaluate", str(s), "--preset", "smoke", "--out", str(out), "--quiet", "--seeds", "1",
                 "--student-epochs", "5"]) == 0
    assert "clean test accuracy" in capsys.readouterr().out
    u = tmp_path / "user.npz"
    np.savez(u, images=cset.images.numpy(), targets=cset.targets.numpy())
    assert main(["evaluate", str(u), "--preset", "smoke", "--out", str(out), "--quiet", "--seeds", "1",
                 "--student-epochs", "5"]) == 0
    assert "IPC 2" in capsys.readouterr().out
