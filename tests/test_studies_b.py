"""Studies scaling / ensemble / selection / labels on a tiny synthetic dataset (seconds each).

One lab (and one tiny expert) is shared by the module; every study runs once in a fixture and the tests
inspect its result. The resumption test re-runs the studies with student training disabled.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import softlabels.engine.executors as executor_mod
from softlabels.config import DataSpec, ExpertRecipe, LabelSpec, StudentRecipe
from softlabels.data.synthetic import make_synthetic
from softlabels.lab import Lab
from softlabels.labels.diagnostics import difficulty_bins
from softlabels.presets import Preset
from softlabels.sets.selection import difficulty_scores
from softlabels.sets.spec import SetSpec
from softlabels.studies import STUDIES, run_study
from softlabels.studies import base as study_base
from softlabels.studies.ensemble import compare_labels
from softlabels.studies.scaling import IMAGE_SEED_BASE, label_for_k

C = 4
TINY = Preset(
    name="tiny-test", data=DataSpec(name="synthetic", val_fraction=0.2),
    expert=ExpertRecipe(model="convnet-d3", width=8, epochs=3, train_images=200, precision="fp32"),
    student=StudentRecipe(model="convnet-d3", width=8, epochs=5, precision="fp32", compile="off"),
    ipcs=(1, 2), seeds=(0,), sweep_epochs=(1, 3), sweep_length=5,
)
SCALING = dict(ipcs=[1, 2, 4], ks=[0, 1, 2, C], epochs=[1, 3], frontier_epochs=[1, 2, 3], seeds=[0])
ENSEMBLE = dict(n=2, ipcs=[1, 2], expert_epoch=2, seeds=[0])
SELECTION = dict(ipcs=[1, 2], bins=[0, 1, 3], num_bins=4, seeds=[0], expert_epoch=2)


def finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    ds = make_synthetic(num_classes=C, n_train=240, n_test=80, size=12)
    return Lab(tmp_path_factory.mktemp("studies_b"), data=DataSpec(name="synthetic", val_fraction=0.2),
               dataset=ds, progress=False)


@pytest.fixture(scope="module")
def scaling(lab):
    return run_study("scaling", lab, preset=TINY, **SCALING)


@pytest.fixture(scope="module")
def ensemble(lab):
    return run_study("ensemble", lab, preset=TINY, **ENSEMBLE)


@pytest.fixture(scope="module")
def selection(lab):
    captured: list[tuple[int, torch.Tensor]] = []
    real = lab.build_set
    pool_position = {int(d): p for p, d in enumerate(lab.prepared.train_idx.tolist())}

    def spy(spec, **kw):  # the pool positions of every bin-selected set the study builds
        cset = real(spec, **kw)
        if spec.selection.startswith("ce-bin"):
            captured.append(
                (spec.ipc, torch.tensor([pool_position[d] for d in cset.manifest["source_indices"]]))
            )
        return cset

    mp = pytest.MonkeyPatch()
    mp.setattr(lab, "build_set", spy)
    try:
        result = run_study("selection", lab, preset=TINY, **SELECTION)
    finally:
        mp.undo()
    return result, captured


def check_outputs(lab, result, name: str) -> None:
    folder = study_base.study_dir(lab, name)
    assert (folder / "summary.json").exists() and (folder / "table.csv").exists()
    saved = json.loads((folder / "summary.json").read_text())
    assert saved["name"] == name and saved["finding"] and saved["protocol"] == "clean" and saved["settings"]
    assert result.figures
    for f in result.figures:
        assert f.exists() and f.with_suffix(".svg").exists()


def test_registered():
    for name in ("scaling", "ensemble", "selection", "labels"):
        assert name in STUDIES


# --- scaling ------------------------------------------------------------------------------------------------


def test_scaling_rows_cover_grid(lab, scaling):
    cells = {(r["expert_epoch"], r["k"], r["ipc"]) for r in scaling.rows}
    expected = {(None, 0, i) for i in SCALING["ipcs"]}
    expected |= {(e, k, i) for e in SCALING["epochs"] for k in (1, 2, C) for i in SCALING["ipcs"]}
    expected |= {(e, C, i) for e in SCALING["frontier_epochs"] for i in SCALING["ipcs"]}
    assert cells == expected and len(scaling.rows) == len(expected)
    for r in scaling.rows:
        assert finite(r["test_mean"]) and finite(r["test_std"]) and r["n"] == 1 and r["nbytes"] > 0
    check_outputs(lab, scaling, "scaling")


def test_scaling_k0_is_hard_and_kC_is_full(lab, scaling, monkeypatch):
    for r in scaling.rows:
        if r["k"] == 0:
            assert (r["label_kind"], r["codec"], r["expert_epoch"]) == ("hard", "hard", None)
        elif r["k"] == C:
            assert (r["label_kind"], r["transform"], r["codec"]) == ("soft", "none", "fp32")
        else:
            assert r["transform"] == f"topk:k={r['k']},renorm=0"
    assert label_for_k(C, epoch=2, num_classes=C) == LabelSpec(kind="soft", expert_epoch=2)
    assert label_for_k(0, epoch=2, num_classes=C) == LabelSpec(kind="hard", codec="hard")
    # the stored k = C / k = 0 cells ARE the plain full-label / hard-label runs: asking for them is a hit
    monkeypatch.setattr(executor_mod, "train_student", _no_training)
    expert = lab.expert(TINY.expert)
    for label in (LabelSpec(kind="soft", expert_epoch=3), LabelSpec(kind="hard", codec="hard")):
        res = lab.evaluate(SetSpec(ipc=2, label=label, image_seed=IMAGE_SEED_BASE + 2), student=TINY.student,
                           seeds=[0], experts=[expert], study="scaling")
        assert res[0]["cached"]


def test_scaling_topk_labels_keep_k_entries(lab):
    expert = lab.expert(TINY.expert)
    cset = lab.build_set(
        SetSpec(ipc=2, label=label_for_k(2, epoch=3, num_classes=C), image_seed=1), experts=[expert]
    )
    assert ((cset.labels > 0).sum(1) <= 2).all() and (cset.labels.sum(1) <= 1 + 1e-6).all()


def test_scaling_fit_and_match_reported(scaling):
    fits = scaling.summary["fits"]
    assert set(fits) == {"1", "3"}
    for per_k in fits.values():
        assert set(per_k) == {"hard", "top-1", "top-2", "full"}
        for f in per_k.values():
            assert f["form"] in ("acc = a - b * ipc^(-alpha)", "acc = c + d * ln(ipc)") and f["n"] == 3
            assert all(finite(v) for v in f["params"].values())
    matches = scaling.summary["ipc_to_match"]
    assert len(matches) == 2 * 3 and all(m["ipc"] == 1 for m in matches)
    assert [f["ipc"] for f in scaling.summary["frontier"]] == SCALING["ipcs"]
    assert all(f["best_epoch"] in SCALING["frontier_epochs"] for f in scaling.summary["frontier"])


def test_scaling_rejects_bad_options(lab):
    with pytest.raises(ValueError, match="ks"):
        run_study("scaling", lab, preset=TINY, ks=[0, C + 1], ipcs=[1], epochs=[1])
    with pytest.raises(ValueError, match="ipcs"):
        run_study("scaling", lab, preset=TINY, ipcs=[0, 1], epochs=[1])
    with pytest.raises(ValueError, match="epochs"):
        run_study("scaling", lab, preset=TINY, ipcs=[1], epochs=[9])
    with pytest.raises(ValueError, match="scale"):
        run_study("scaling", lab, scale="huge", preset=TINY)


# --- ensemble -----------------------------------------------------------------------------------------------


def test_ensemble_rows_and_labels(lab, ensemble):
    rows = ensemble.rows
    assert {(r["ipc"], r["labels"]) for r in rows} == {(i, s) for i in (1, 2) for s in ("single", "ensemble")}
    assert all(finite(r["test_mean"]) and r["expert_epoch"] == 2 for r in rows)
    assert {r["n_experts"] for r in rows} == {1, 2}
    # the extra member is trained only to the epoch used; the shared expert keeps its full trajectory
    assert ensemble.summary["member_epochs_trained"] == [3, 2]
    lab_rows = ensemble.summary["labels_by_epoch"]
    assert [r["expert_epoch"] for r in lab_rows] == [1, 2]
    for r in lab_rows:
        assert 0 <= r["jsd_mean"] <= 1 and 0 <= r["argmax_agreement"] <= 1
        assert 0 <= r["single_argmax_correct"] <= 1 and 0 <= r["ensemble_argmax_correct"] <= 1
    assert "ensemble_expert_test_acc" in lab_rows[1]
    check_outputs(lab, ensemble, "ensemble")
    assert (study_base.study_dir(lab, "ensemble") / "labels.csv").exists()


def test_ensemble_of_one_is_the_single_expert(lab, ensemble):
    from softlabels.studies.ensemble import study_ensemble

    res = study_ensemble(lab, scale="quick", preset=TINY, n=1, ipcs=[1], expert_epoch=2, seeds=[0])
    single, ens = (next(r for r in res.rows if r["labels"] == s) for s in ("single", "ensemble"))
    assert single["test_mean"] == ens["test_mean"] and ens["delta"] == 0.0
    for r in res.summary["labels_by_epoch"]:
        assert r["jsd_mean"] == 0.0 and r["argmax_agreement"] == 1.0
    p = torch.softmax(torch.randn(20, C), 1)
    same = compare_labels(p, p.clone(), torch.randint(0, C, (20,)))
    assert same["jsd_mean"] == 0.0 and same["argmax_agreement"] == 1.0


def test_ensemble_rejects_bad_n(lab):
    with pytest.raises(ValueError, match="n"):
        run_study("ensemble", lab, preset=TINY, n=0, ipcs=[1], expert_epoch=1)


# --- selection ----------------------------------------------------------------------------------------------


def test_selection_rows(lab, selection):
    result, _ = selection
    rows = result.rows
    keys = {(r["ipc"], r["bin"]) for r in rows}
    assert keys == {(i, b) for i in (1, 2) for b in (None, 0, 1, 3)}
    for r in rows:
        assert (
            finite(r["test_mean"])
            and finite(r["rel_change"])
            and r["expert_epoch"] == 2
            and r["score_epoch"] == 2
        )
    assert all(r["rel_change"] == 0.0 for r in rows if r["bin"] is None)
    assert set(result.summary["relative_change"]) == {"1", "2"}
    check_outputs(lab, result, "selection")


def test_selection_bins_hold_only_their_images(lab, selection):
    result, captured = selection
    expert = lab.expert(TINY.expert)
    scores = difficulty_scores(lab.prepared, expert, 2)
    targets = lab.prepared.train_targets
    bins = difficulty_bins(scores, targets, num_bins=4, num_classes=C)
    # bin order of the evaluate calls: per IPC, bins 0, 1, 3 (one repetition each)
    assert [ipc for ipc, _ in captured] == [1, 1, 1, 2, 2, 2]
    for (ipc, pos), b in zip(captured, [0, 1, 3, 0, 1, 3], strict=True):
        assert pos.numel() == ipc * C
        for c in range(C):
            mine = pos[targets[pos] == c]
            assert mine.numel() == ipc
            s_bin = scores[bins[c][b]]
            assert (scores[mine] >= s_bin.min()).all() and (scores[mine] <= s_bin.max()).all()
    # the score is -log p_y of the expert's probabilities (not -log softmax(probabilities)_y, the reference's)
    from softlabels.labels.generate import label_images

    probs = label_images(lab.prepared, torch.arange(targets.numel()), LabelSpec(kind="soft", expert_epoch=2),
                         [expert])
    expected = -torch.log(probs.double()[torch.arange(targets.numel()), targets].clamp_min(1e-12))
    torch.testing.assert_close(scores, expected)
    assert result.summary["score_quantiles"]["2"]["min"] >= 0


def test_selection_rejects_bad_bins(lab):
    with pytest.raises(ValueError, match="bins"):
        run_study("selection", lab, preset=TINY, ipcs=[1], bins=[4], num_bins=4, expert_epoch=1)


# --- labels -------------------------------------------------------------------------------------------------


def test_labels_study(lab, monkeypatch):
    monkeypatch.setattr(study_base, "base_settings", lambda scale: TINY)  # no preset: the patched base
    monkeypatch.setattr(executor_mod, "train_student", _no_training)  # the label study trains no student
    res = run_study("labels", lab, scale="quick", worst=5)
    assert [r["epoch"] for r in res.rows] == [1, 2, 3]
    for r in res.rows:
        assert all(finite(r[k]) for k in ("mean_entropy", "mean_confidence", "accuracy", "expert_test_acc"))
    sim = res.summary["similarity_matrix"]
    assert len(sim) == C and all(sim[i][i] is None for i in range(C))
    assert all(finite(sim[i][j]) for i in range(C) for j in range(C) if i != j)
    pairs = res.summary["similar_pairs"]
    assert [p["mean_prob"] for p in pairs] == sorted((p["mean_prob"] for p in pairs), reverse=True)
    classes = list(lab.prepared.dataset.classes)
    sym = {(min(i, j), max(i, j)): (sim[i][j] + sim[j][i]) / 2 for i in range(C) for j in range(C) if i != j}
    best = max(sym, key=sym.get)
    assert {pairs[0]["a"], pairs[0]["b"]} == {classes[best[0]], classes[best[1]]}
    worst = res.summary["worst_samples"]
    assert len(worst) == 5 and [w["p_true"] for w in worst] == sorted(w["p_true"] for w in worst)
    ds = lab.prepared.dataset
    assert all(classes[int(ds.train_targets[w["dataset_index"]])] == w["true"] for w in worst)
    assert res.settings["preset"] == "tiny-test"
    check_outputs(lab, res, "labels")
    small = run_study("labels", lab, scale="quick", ipc=2, epochs=[3], worst=3)
    assert small.rows[0]["images"] == 2 * C and small.summary["detail"]["images"] == 2 * C


# --- resumption ---------------------------------------------------------------------------------------------


def _no_training(*args, **kwargs):
    raise AssertionError("a stored cell was recomputed")


def test_rerun_recomputes_nothing(lab, scaling, ensemble, selection, monkeypatch):
    monkeypatch.setattr(executor_mod, "train_student", _no_training)
    again = run_study("scaling", lab, preset=TINY, **SCALING)
    assert again.rows == scaling.rows
    again = run_study("ensemble", lab, preset=TINY, **ENSEMBLE)
    assert again.rows == ensemble.rows
    again = run_study("selection", lab, preset=TINY, **SELECTION)
    assert again.rows == selection[0].rows
