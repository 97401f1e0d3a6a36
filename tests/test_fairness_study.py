"""The fairness study: its paired comparison and verdict on hand-made runs, and a tiny synthetic run."""

from __future__ import annotations

import json
import math

import pytest

from softlabels.config import DataSpec, ExpertRecipe, StudentRecipe
from softlabels.data.synthetic import make_synthetic
from softlabels.lab import Lab
from softlabels.presets import Preset
from softlabels.studies import STUDIES, run_study
from softlabels.studies import fairness as study


def _run(labels, training, seed, worst, nsd, mean=0.5):
    return {"labels": labels, "training": training, "seed": seed, "robust_worst": worst, "robust_nsd": nsd,
            "robust_mean": mean, "clean_mean": 0.8, "clean_worst": 0.6, "clean_nsd": 0.1}


def _runs(d_worst, d_nsd, training="standard"):
    out = []
    for s, jitter in enumerate((0.0, 0.01, -0.01)):
        out.append(_run("uniform", training, s, 0.2 + jitter, 0.5 + jitter))
        out.append(_run("absld", training, s, 0.2 + jitter + d_worst + jitter / 2, 0.5 + jitter + d_nsd))
    return out


def test_compare_pairs_by_seed():
    c = study.compare(_runs(0.1, -0.05), "standard")
    assert c["seeds"] == [0, 1, 2]
    # paired differences 0.1, 0.105, 0.095: mean 0.1
    assert c["robust_worst"]["diff"] == pytest.approx(0.1)
    assert c["robust_worst"]["lo"] < 0.1 < c["robust_worst"]["hi"]
    assert c["robust_nsd"]["diff"] == pytest.approx(-0.05)
    assert c["robust_worst"]["uniform"] == pytest.approx(0.2)


def test_verdict_follows_the_numbers():
    helped = study.verdict({"standard": study.compare(_runs(0.1, -0.05), "standard")})
    assert "ABSLD helped robust fairness" in helped and "standard training (3 seeds)" in helped
    spread = study.verdict({"standard": study.compare(_runs(0.0, -0.05), "standard")})
    assert "narrowed the spread" in spread and "lower mean" not in spread
    hurt = study.verdict({"adversarial": study.compare(_runs(-0.1, 0.0, "adversarial"), "adversarial")})
    assert "ABSLD hurt robust fairness" in hurt
    none = study.verdict({"standard": study.compare(_runs(0.0, 0.0), "standard")})
    assert "no difference shown" in none
    mixed = study.verdict({"standard": study.compare(_runs(0.1, 0.05), "standard")})
    assert "mixed" in mixed
    assert "not assessed" in study.verdict({"adversarial": study.compare(_runs(0.1, 0.0), "adversarial")})


def test_table_rows_mean_over_seeds():
    rows = study.table_rows(_runs(0.1, -0.05))
    assert [(r["training"], r["labels"], r["n"]) for r in rows] == [("standard", "uniform", 3),
                                                                   ("standard", "absld", 3)]
    assert rows[0]["robust_worst"] == pytest.approx(0.2)


C = 4
TINY = Preset(
    name="tiny-fair", data=DataSpec(name="synthetic", val_fraction=0.2),
    expert=ExpertRecipe(model="convnet-d3", width=8, epochs=2, train_images=200, precision="fp32"),
    student=StudentRecipe(model="convnet-d3", width=8, epochs=4, precision="fp32", compile="off"),
    ipcs=(2,), seeds=(0,), sweep_epochs=(1, 2), sweep_length=3,
)


def test_study_runs_and_resumes(tmp_path, monkeypatch):
    pytest.importorskip("art")
    ds = make_synthetic(num_classes=C, n_train=240, n_test=80, size=12)
    lab = Lab(tmp_path, data=TINY.data, dataset=ds, progress=False)
    opts = dict(preset=TINY, ipc=2, seeds=[0, 1], steps=3, test_images=40, attack_steps=2,
                train_attack_steps=1, expert_epoch=2)
    assert "fairness" in STUDIES
    res = run_study("fairness", lab, **opts)
    assert {(r["training"], r["labels"]) for r in res.rows} == {(t, la) for t in study.TRAININGS
                                                                for la in study.LABELS}
    for r in res.rows:
        assert r["n"] == 2 and 0 <= r["robust_worst"] <= r["robust_mean"] <= r["clean_mean"] + 1e-9
    assert set(res.summary) == {"standard", "adversarial"} and res.finding
    saved = json.loads((tmp_path / "studies" / "fairness" / "summary.json").read_text())
    assert saved["settings"]["attack"]["steps"] == 2
    runs = list((tmp_path / "studies" / "fairness" / "runs").glob("*.json"))
    assert len(runs) == 8
    one = json.loads(runs[0].read_text())
    assert len(one["robust_per_class"]) == C and not math.isnan(one["robust_nsd"] or 0.0)

    def boom(*a, **k):
        raise AssertionError("a cached run was retrained")

    monkeypatch.setattr(study, "train_absld_student", boom)
    again = run_study("fairness", lab, **opts)
    assert again.rows == res.rows


def test_study_refuses_bad_options(tmp_path):
    pytest.importorskip("art")
    ds = make_synthetic(num_classes=C, n_train=240, n_test=80, size=12)
    lab = Lab(tmp_path, data=TINY.data, dataset=ds, progress=False)
    with pytest.raises(ValueError, match="trainings"):
        run_study("fairness", lab, preset=TINY, trainings=["fgsm"])
    assert not (tmp_path / "experts").exists() or not any((tmp_path / "experts").iterdir())
