"""The pruning study on tiny synthetic data (every method, codecs, query budgets), and its verdict on
hand-made rows."""

from __future__ import annotations

import json
import math

import pytest
import torch

import softlabels.engine.executors as executor_mod
from softlabels.analysis.stats import paired_ci
from softlabels.config import DataSpec, ExpertRecipe, StudentRecipe
from softlabels.data.synthetic import make_synthetic
from softlabels.lab import Lab
from softlabels.presets import Preset
from softlabels.studies import pruning, run_study
from softlabels.studies.base import OptionError, finite, study_dir

C = 4
TINY = Preset(
    name="tiny", data=DataSpec(name="synthetic", val_fraction=0.2),
    expert=ExpertRecipe(model="convnet-d3", width=8, epochs=3, train_images=200, precision="fp32"),
    student=StudentRecipe(model="convnet-d3", width=8, epochs=40, lr=0.05, precision="fp32", compile="off"),
    ipcs=(1, 2), seeds=(0, 1), sweep_epochs=(1, 3), sweep_length=2,
)
OPTS = {"preset": TINY, "ipcs": [1, 2], "seeds": [0, 1], "expert_epoch": 3, "codecs": ["down:factor=2"],
        "codec_ipcs": [2], "query_ipcs": [2], "query_fraction": 0.25, "proxy_epoch": 1}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    torch.set_num_threads(1)
    ds = make_synthetic(num_classes=C, n_train=240, n_test=80, size=12)
    folder = tmp_path_factory.mktemp("pruning")
    with Lab(folder, data=TINY.data, dataset=ds, progress=False, workers=1) as lab:
        yield lab


@pytest.fixture(scope="module")
def result(lab):
    return run_study("pruning", lab, **OPTS)


def _by(rows, **kw):
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


def test_every_method_label_and_ipc_has_a_row_paired_with_random(lab, result):
    rows = result.rows
    sel = _by(rows, section="selection")
    methods = {r["method"] for r in sel}
    assert methods == set(pruning.DEFAULT_METHODS)
    assert {(r["ipc"], r["labels"]) for r in sel} == {(i, k) for i in (1, 2) for k in ("hard", "soft")}
    assert len(sel) == 8 * 2 * 2
    assert all(r["spec"].endswith("epoch=3,keep=hard") for r in sel if r["method"] in ("el2n", "aum"))
    # the difference is the paired mean over repetitions against random of the same IPC and labels
    store = {(r.config["selection"], r.config["ipc"], r.config["label"]["kind"], r.config["seed"]):
             r.metrics["test_acc"] for r in lab.store.query(study="pruning")
             if r.config.get("image_codec") == "raw" and "queries" not in r.config}
    for r in sel:
        if r["method"] == "random":
            assert "diff" not in r
            continue
        a = [store[(r["spec"], r["ipc"], r["labels"], s)] for s in (0, 1)]
        b = [store[("random", r["ipc"], r["labels"], s)] for s in (0, 1)]
        d, lo, hi = paired_ci(a, b)
        assert math.isclose(r["diff"], d) and math.isclose(r["ci_low"], lo) and r["n"] == 2
        assert r["vs_base"] == ("better" if lo > 0 else "worse" if hi < 0 else "no clear difference")


def test_codecs_and_queries_sit_on_the_bytes_axis(result):
    rows = result.rows
    raw = _by(rows, section="selection", method="random", labels="soft", ipc=2)[0]
    down = _by(rows, section="codec")[0]
    assert down["spec"] == "down:factor=2,mode=area" and down["nbytes"] < raw["nbytes"]
    q = {r["method"]: r for r in _by(rows, section="queries")}
    assert set(q) == {"random", "uncertainty", "diversity"}
    n_set = 2 * C
    for name, r in q.items():
        assert r["expert_queries"] == 2  # 25% of 8 images
        assert r["proxy_queries"] == (n_set if name == "uncertainty" else 0)
        assert finite(r["diff_vs_hard"])
    assert q["random"]["baseline"] == "random" and q["uncertainty"]["baseline"].startswith("random:q=2")
    assert {f.name for f in result.figures} == {"pruning_ipc.png", "pruning_bytes.png"}
    assert all(f.exists() for f in result.figures)


def test_outputs_and_resume_trains_nothing(lab, result, monkeypatch):
    folder = study_dir(lab, "pruning")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["finding"] == result.finding and summary["settings"]["score_epoch"] == 3
    assert (folder / "table.csv").read_text().startswith("section,")

    def no_training(*a, **k):
        raise AssertionError("a re-run must read every student from the store")

    monkeypatch.setattr(executor_mod, "train_student", no_training)
    again = run_study("pruning", lab, **OPTS)
    assert [r["test_mean"] for r in again.rows] == [r["test_mean"] for r in result.rows]


def test_options_are_checked_before_training(lab):
    with pytest.raises(OptionError, match="besides random"):
        run_study("pruning", lab, **{**OPTS, "methods": ["random"]})
    with pytest.raises(ValueError, match="unknown image selection"):
        run_study("pruning", lab, **{**OPTS, "methods": ["el2m"]})
    with pytest.raises(ValueError, match="score_epoch 9 exceeds"):
        run_study("pruning", lab, **{**OPTS, "score_epoch": 9})
    with pytest.raises(ValueError, match="not among the study's IPCs"):
        run_study("pruning", lab, **{**OPTS, "codec_ipcs": [5]})
    with pytest.raises(ValueError, match="proxy_epoch 3 must precede"):
        run_study("pruning", lab, **{**OPTS, "proxy_epoch": 3})


def test_method_specs_fill_variants():
    assert pruning.method_specs(["el2n", "herding"], 5) == [
        "random", "el2n:epoch=5,keep=hard", "herding:epoch=5"]
    assert pruning.method_specs(["aum:epoch=4,keep=easy", "random"], 5) == ["random", "aum:epoch=4,keep=easy"]


# ------------------------------------------------------------------------------------------ verdict
def _row(method, kind, ipc, diff, lo, hi, section="selection", **extra):
    call = "better" if lo > 0 else "worse" if hi < 0 else "no clear difference"
    if not (finite(lo) and finite(hi)):
        call = "n/a"
    return {"section": section, "method": method, "spec": method, "labels": kind, "ipc": ipc, "n": 3,
            "diff": diff, "ci_low": lo, "ci_high": hi, "vs_base": call, **extra}


def test_verdict_names_winners_and_losers_per_label_kind():
    rows = [
        {"section": "selection", "method": "random", "spec": "random", "labels": "soft", "ipc": 10, "n": 3,
         "test_mean": 0.7},
        _row("herding", "soft", 10, 0.03, 0.01, 0.05),
        _row("el2n", "soft", 10, -0.10, -0.15, -0.05),
        _row("el2n", "hard", 10, -0.20, -0.30, -0.10),
        _row("kcenter", "hard", 1, 0.01, -0.02, 0.04),
    ]
    text = pruning.verdict(rows)
    assert "soft labels: beat random: herding (IPC 10 +3.0 pts [+1.0, +5.0]); worse than random: el2n" in text
    assert "hard labels: beat random: none; worse than random: el2n (IPC 10 -20.0 pts" in text
    assert "kcenter" not in text  # its interval straddles zero: not listed
    s = pruning.summarize(rows)
    assert s["better"] == {"soft": {"herding": [10]}} and s["worse"]["hard"] == {"el2n": [10]}
    assert s["random_acc"] == {"soft": {"10": 0.7}}


def test_verdict_reports_queries_and_refuses_without_pairs():
    q = _row("uncertainty", "soft", 10, 0.02, -0.01, 0.05, section="queries",
             baseline="random:q=10,rest=hard", expert_queries=10, proxy_queries=100)
    text = pruning.verdict([_row("aum", "soft", 1, 0.0, -0.1, 0.1), q])
    assert "beat random: none; worse than random: none" in text
    assert "uncertainty at IPC 10 (10 expert + 100 proxy queries) +2.0 pts [-1.0, +5.0]" in text
    single = [_row("aum", "soft", 1, 0.01, math.nan, math.nan)]
    assert pruning.verdict(single).startswith("Not assessed: paired confidence intervals need")
    assert pruning.verdict([]).startswith("Not assessed: no selection method")
