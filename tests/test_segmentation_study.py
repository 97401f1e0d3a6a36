"""The segmentation (JML) study: paired table and verdict on hand-made runs, and a tiny synthetic run."""

from __future__ import annotations

import pytest

from softlabels.config import DataSpec
from softlabels.data.synthetic import make_synthetic
from softlabels.lab import Lab
from softlabels.studies import STUDIES, run_study
from softlabels.studies import segmentation_study as study

CE, JML = "soft-ce", "jml:weight=1.0,ce=1.0"


def _runs(delta, kind="smooth"):
    out = []
    for s, base in enumerate((0.50, 0.52, 0.48)):
        out.append({"labels": kind, "loss": CE, "seed": s, "miou": base, "pixel_acc": 0.9})
        out.append({"labels": kind, "loss": JML, "seed": s, "miou": base + delta + 0.001 * s,
                    "pixel_acc": 0.9})
    return out


def test_table_rows_pair_by_seed():
    rows = study.table_rows(_runs(0.05), [CE, JML])
    ce, jml = rows
    assert (ce["loss"], ce["diff"], ce["n"]) == (CE, None, 3)
    assert ce["miou_mean"] == pytest.approx(0.50)
    # paired differences 0.050, 0.051, 0.052: mean 0.051, a tight CI above 0
    assert jml["diff"] == pytest.approx(0.051)
    assert 0 < jml["diff_lo"] < 0.051 < jml["diff_hi"]


def test_verdict_follows_the_numbers():
    assert f"{JML} beats {CE}" in study.verdict(study.table_rows(_runs(0.05), [CE, JML]))
    assert f"{JML} loses to {CE}" in study.verdict(study.table_rows(_runs(-0.05), [CE, JML]))
    noisy = [r | {"miou": r["miou"] + (0.05 if r["loss"] == JML and r["seed"] == 0 else 0)}
             for r in _runs(-0.01)]
    assert "shows no difference" in study.verdict(study.table_rows(noisy, [CE, JML]))
    both = study.verdict(study.table_rows(_runs(0.05) + _runs(-0.05, "kd"), [CE, JML]))
    assert "smooth labels (3 seeds)" in both and "kd labels (3 seeds)" in both


def test_study_runs_and_resumes(tmp_path, monkeypatch):
    ds = make_synthetic(num_classes=3, n_train=60, n_test=30, size=8)
    lab = Lab(tmp_path, data=DataSpec(name="synthetic", val_fraction=0.2), dataset=ds, progress=False)
    opts = dict(seeds=[0, 1], n_train=12, n_test=8, size=12, items=1, steps=3, width=4)
    assert "segmentation" in STUDIES
    res = run_study("segmentation", lab, **opts)
    assert [(r["labels"], r["loss"]) for r in res.rows] == [("smooth", CE), ("smooth", JML), ("kd", CE),
                                                             ("kd", JML)]
    assert all(r["n"] == 2 and 0 <= r["miou_mean"] <= 1 for r in res.rows) and res.finding

    def boom(*a, **k):
        raise AssertionError("a cached comparison was recomputed")

    monkeypatch.setattr(study, "compare_losses", boom)
    assert run_study("segmentation", lab, **opts).rows == res.rows
    with pytest.raises(ValueError, match="labels must be"):
        run_study("segmentation", lab, labels=["noisy"], **opts)
    with pytest.raises(ValueError, match="reference"):
        run_study("segmentation", lab, losses=[CE], **opts)
