"""The public API: every CLI command's one-call library equivalent, and run identity as a value."""

from __future__ import annotations

import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import softlabels as sl
import softlabels.engine.executors as executor_mod
from softlabels.store import ResultsStore


@pytest.fixture
def tiny_preset(tiny_data_spec, tiny_expert, tiny_student):
    return sl.Preset(name="tiny", data=tiny_data_spec, expert=tiny_expert, student=tiny_student, ipcs=(1, 2),
                     seeds=(0, 1), sweep_epochs=(1, 3), sweep_length=3)


@pytest.fixture
def counted(monkeypatch):
    calls: list[int] = []
    real = executor_mod.train_student
    monkeypatch.setattr(
        executor_mod, "train_student", lambda *a, **k: (calls.append(k["seed"]), real(*a, **k))[1]
    )
    return calls


def test_the_public_surface():
    for name in (
        "Lab",
        "SetSpec",
        "CellSpec",
        "LabelSpec",
        "StudentRecipe",
        "ExpertRecipe",
        "DataSpec",
        "Preset",
        "get_preset",
        "run_baseline",
        "run_study",
        "evaluate_set",
        "distill",
        "best_within_budget",
        "fill_budget",
        "build_report",
        "ResultsStore",
        "CompressedSet",
        "against_baselines",
        "diagnose_set",
        "load_external_trajectory",
        "learn_labels",
    ):
        assert hasattr(sl, name), name
    for lister in (
        sl.list_datasets,
        sl.list_models,
        sl.list_presets,
        sl.list_transforms,
        sl.list_losses,
        sl.list_selections,
        sl.list_treatments,
        sl.list_studies,
        sl.list_queries,
        sl.list_learners,
        sl.list_ensemble_modes,
    ):
        names = lister()
        assert names and all(isinstance(k, str) for k in names)
    codecs = sl.list_codecs()
    assert "fp16" in codecs["label"] and "zlib" in codecs["image"]
    assert "default" in sl.list_presets() and "bytes" in sl.list_studies()


def test_keyword_only_configs():
    with pytest.raises(TypeError):
        sl.LabelSpec("soft", 3)  # positional arguments are refused: every option is named
    with pytest.raises(TypeError):
        sl.SetSpec(10)
    with pytest.raises(TypeError, match="sequence"):
        sl.Preset(name="x", data=sl.DataSpec(), expert=sl.ExpertRecipe(), student=sl.StudentRecipe(), seeds=3)


def test_run_expert_distill_evaluate_study_report_results_budget(tiny_lab, tiny_preset, tmp_path, counted):
    lab = tiny_lab
    result = sl.run_baseline(lab, tiny_preset)  # softlabels run
    assert result.report.exists() and result.plot.exists()
    assert [(r.ipc, r.label) for r in result.rows] == [(1, "hard"), (1, "soft"), (2, "hard"), (2, "soft")]
    expert = lab.expert(tiny_preset.expert)  # softlabels expert train
    assert expert.complete
    spec = sl.SetSpec(ipc=2, label=sl.LabelSpec(expert_epoch=2, codec="fp16"), image_codec="zlib")
    path = tmp_path / "set.safetensors"
    cset = sl.distill(lab, spec, expert=tiny_preset.expert, output=path)  # softlabels distill
    assert path.exists() and sl.CompressedSet.load(path).nbytes == cset.nbytes
    with pytest.raises(ValueError, match="safetensors"):
        sl.distill(lab, spec, expert=tiny_preset.expert, output=tmp_path / "set.npz")
    with pytest.raises(FileExistsError, match="overwrite"):
        sl.distill(lab, spec, expert=tiny_preset.expert, output=path)
    counted.clear()
    ev = sl.evaluate_set(lab, path, preset=tiny_preset, seeds=(0, 1))  # softlabels evaluate
    assert len(counted) == 2 and ev.label_kind == "soft" and len(ev.accs) == 2 and 0 <= ev.mean <= 1
    study = sl.run_study("labels", lab, preset=tiny_preset, worst=3)  # softlabels study
    assert study.rows and (lab.out_dir / "studies" / "labels" / "summary.json").exists()
    report = sl.build_report(lab.out_dir)  # softlabels report
    assert "Main job" in report.read_text()
    with ResultsStore(lab.out_dir / "results.sqlite") as store:  # softlabels results
        assert len(store.query(study="evaluate")) == 2
    answer = sl.best_within_budget(lab.out_dir, "1MB", data=lab.data)  # softlabels budget
    assert answer is not None and answer.bytes_total <= 1_000_000
    filled = sl.fill_budget(lab, 2000, preset=tiny_preset, expert_epoch=2, ipcs=[1, 2])  # budget --fill
    assert filled is not None and filled.bytes_total <= 2000


def test_a_user_set_is_keyed_by_its_content_and_stored_with_its_label_kind(
    tiny_lab, tiny_preset, tmp_path, counted
):
    lab = tiny_lab
    ds = lab.prepared.dataset
    images, targets = ds.train_images[:8], ds.train_targets[:8]
    user = sl.CompressedSet.from_arrays(images, targets=targets, num_classes=ds.num_classes)
    path = user.save(tmp_path / "mine.safetensors")
    ev = sl.evaluate_set(lab, path, preset=tiny_preset, seeds=(0,))
    assert ev.label_kind == "hard" and len(counted) == 1
    copy = tmp_path / "elsewhere" / "renamed.safetensors"
    copy.parent.mkdir()
    shutil.copy(path, copy)
    again = sl.evaluate_set(lab, copy, preset=tiny_preset, seeds=(0,))  # a moved or copied set: the same set
    assert len(counted) == 1 and again.accs == ev.accs
    hard = sl.best_within_budget(lab.store, "1MB", label_kind="hard", data=lab.data, study="evaluate")
    assert hard is not None and hard.label_kind == "hard"  # `budget --label-kind hard` finds the user's set
    soft_labels = torch.softmax(torch.randn(8, ds.num_classes, generator=torch.Generator().manual_seed(0)), 1)
    other = sl.CompressedSet.from_arrays(images, soft_labels).save(tmp_path / "soft.safetensors")
    assert sl.evaluate_set(lab, other, preset=tiny_preset, seeds=(0,)).label_kind == "soft"
    assert len(counted) == 2  # another content: another run


def _spec(ipc, kind, epoch, temperature, transform, codec, image_codec, seed, selection, treatment):
    label = (
        sl.LabelSpec(kind="hard", codec="hard")
        if kind == "hard"
        else sl.LabelSpec(expert_epoch=epoch, temperature=temperature, transform=transform, codec=codec)
    )
    return sl.SetSpec(
        ipc=ipc,
        label=label,
        image_seed=seed,
        image_codec=image_codec,
        selection=selection,
        treatment=treatment,
    )


SPECS = st.builds(
    _spec,
    st.integers(1, 3),
    st.sampled_from(["hard", "soft"]),
    st.integers(1, 3),
    st.sampled_from([1.0, 2.0]),
    st.sampled_from(["none", "topk:k=2", "smooth:eps=0.1"]),
    st.sampled_from(["fp32", "fp16", "topk:k=2"]),
    st.sampled_from(["raw", "zlib"]),
    st.integers(0, 2),
    st.sampled_from(["random", "ce-bin:bin=0,bins=4,epoch=2"]),
    st.sampled_from(["none", "drop-class:cls=1"]),
)


class _Expert:
    def __init__(self, key):
        self.key = key


@settings(max_examples=200, deadline=None)
@given(SPECS, SPECS)
def test_two_different_sets_never_share_a_key(a, b):
    experts = [_Expert("e0")]
    ia, ib = a.identity(a.experts_used(experts)), b.identity(b.experts_used(experts))
    assert (ia == ib) == (a == b)
    assert (ResultsStore.key(ia) == ResultsStore.key(ib)) == (a == b)


def test_equal_sets_written_differently_share_a_key():
    a = sl.SetSpec(ipc=2, label=sl.LabelSpec(expert_epoch=1, transform="topk:k=3", codec="topk:k=2"))
    b = sl.SetSpec(
        ipc=2,
        label=sl.LabelSpec(
            expert_epoch=1, transform="topk: k=3, renorm=0", codec="topk:k=2,values=fp32,renorm=0"
        ),
    )
    assert a == b and a.identity([_Expert("e")]) == b.identity([_Expert("e")])
    other_expert = a.identity([_Expert("f")])
    assert other_expert != a.identity([_Expert("e")])  # the labels' expert is part of the set


def test_run_configs_cannot_be_assembled_by_hand(tiny_lab, tiny_student):
    cell = sl.CellSpec(
        set=sl.SetSpec(ipc=1, label=sl.LabelSpec(kind="hard", codec="hard")), student=tiny_student, seeds=(0,)
    )
    cfg = tiny_lab.run_config(cell, 0)
    assert cfg["selection"] == "random" and cfg["codec"] == "hard" and cfg["label"]["kind"] == "hard"
    with pytest.raises(TypeError):
        sl.CellSpec(set=cell.set, student=tiny_student, seeds=(0,), extra={"selection": "x"})
    with pytest.raises(ValueError, match="given"):
        sl.CellSpec(
            set=sl.SetSpec(ipc=1, selection="all", source="file:abc"), student=tiny_student, seeds=(0,)
        )
