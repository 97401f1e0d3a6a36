"""The ensemble study's committee modes (MEAL V2 probs, CV-DD vote): verdict on hand-made rows, tiny run."""

from __future__ import annotations

import math

import pytest

from softlabels.config import DataSpec, ExpertRecipe, StudentRecipe
from softlabels.data.synthetic import make_synthetic
from softlabels.lab import Lab
from softlabels.presets import Preset
from softlabels.studies import run_study
from softlabels.studies.ensemble import mode_verdict


def _row(mode, vs_logits, vs_single):
    (d1, lo1, hi1), (d2, lo2, hi2) = vs_logits, vs_single
    return {"ipc": 10, "labels": f"ensemble-{mode}", "ensemble_mode": mode, "test_mean": 0.7,
            "vs_logits": d1, "vs_logits_lo": lo1, "vs_logits_hi": hi1,
            "vs_single": d2, "vs_single_lo": lo2, "vs_single_hi": hi2}


def test_mode_verdict_follows_the_cis():
    text = mode_verdict([{"ipc": 10, "labels": "single"},
                         _row("probs", (0.02, 0.01, 0.03), (-0.01, -0.02, -0.005)),
                         _row("vote", (0.0, -0.01, 0.01), (0.01, float("nan"), float("nan")))])
    assert "probs committee (70.0%) beats the logit ensemble (+2.0 pts [+1.0, +3.0])" in text
    assert "loses to the single expert" in text
    assert "vote committee (70.0%) does not differ from the logit ensemble" in text
    assert text.count("does not differ from") == 2  # one seed: an unbounded CI claims nothing
    assert mode_verdict([{"ipc": 1, "labels": "ensemble"}]) == ""


C = 4
TINY = Preset(
    name="tiny-modes", data=DataSpec(name="synthetic", val_fraction=0.2),
    expert=ExpertRecipe(model="convnet-d3", width=8, epochs=2, train_images=200, precision="fp32"),
    student=StudentRecipe(model="convnet-d3", width=8, epochs=3, precision="fp32", compile="off"),
    ipcs=(1,), seeds=(0,), sweep_epochs=(1, 2), sweep_length=3,
)


def test_study_compares_modes(tmp_path):
    ds = make_synthetic(num_classes=C, n_train=240, n_test=80, size=12)
    lab = Lab(tmp_path, data=TINY.data, dataset=ds, progress=False)
    res = run_study("ensemble", lab, preset=TINY, n=3, ipcs=[1], expert_epoch=2, seeds=[0, 1],
                    modes=["logits", "probs", "vote:weights=prior"], pool_images=40)
    assert [r["labels"] for r in res.rows] == ["single", "ensemble", "ensemble-probs:weights=equal",
                                               "ensemble-vote:weights=prior"]
    for r in res.rows[2:]:
        assert r["n"] == 2 and math.isfinite(r["vs_logits"]) and math.isfinite(r["vs_single"])
    assert res.summary["modes"] == ["logits", "probs:weights=equal", "vote:weights=prior"]
    agree = res.summary["committee_agreement"]["2"]
    assert agree["members"] == 3 and 0 <= agree["pairwise_agreement"] <= 1
    assert "Committee modes" in res.finding
    with pytest.raises(ValueError):
        run_study("ensemble", lab, preset=TINY, n=3, ipcs=[1], expert_epoch=2, modes=["median"])
