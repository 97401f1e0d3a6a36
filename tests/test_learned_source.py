"""Learned labels as a set's label source: the spec, the held-out meta set, resume, the CLI options."""

from __future__ import annotations

import argparse

import pytest
import torch

from softlabels.cli.jobs import distill_spec
from softlabels.config import LabelSpec
from softlabels.labels.learned_source import learned_set_labels, meta_positions
from softlabels.labels.learners import DEFAULT_LEARNER, learner_config, list_learners
from softlabels.sets.spec import SetSpec

TINY = "bptt:width=8,inner_steps=2,meta_steps=15,meta_batch=16,meta_size=60"


def test_label_spec_learned_is_canonical_and_checked() -> None:
    assert list_learners() == ["bptt"]
    assert LabelSpec(kind="learned").learner == DEFAULT_LEARNER
    a = LabelSpec(kind="learned", learner="bptt:meta_steps=7")
    assert a == LabelSpec(kind="learned", learner="bptt: inner_steps=10, meta_steps=7")  # defaults, order
    assert "meta_steps=7" in a.learner and a.codec == "fp32"
    with pytest.raises(ValueError, match="learned labels read no expert"):
        LabelSpec(kind="learned", expert_epoch=3)
    with pytest.raises(ValueError, match="learner= is for learned labels"):
        LabelSpec(kind="soft", expert_epoch=3, learner="bptt")
    with pytest.raises(ValueError, match="unknown parameter 'steps'"):
        LabelSpec(kind="learned", learner="bptt:steps=3")
    # the learner is part of the set's identity; learned sets read no expert
    one, two = (
        SetSpec(ipc=1, label=LabelSpec(kind="learned", learner=f"bptt:meta_steps={m}")) for m in (5, 6)
    )
    assert one.identity() != two.identity() and one.identity()["expert_key"] == ""
    cfg, size = learner_config("bptt:truncate=4,meta_size=99", seed=3)
    assert (cfg.truncate, cfg.seed, size) == (4, 3, 99)
    assert learner_config("bptt", seed=0)[0].truncate is None  # 0 means every inner step


def test_meta_positions_exclude_the_set_and_are_seeded() -> None:
    exclude = torch.tensor([0, 5, 7])
    a = meta_positions(20, exclude, size=10, seed=1)
    assert len(a) == 10 and len(set(a.tolist())) == 10
    assert not set(a.tolist()) & {0, 5, 7}
    assert torch.equal(a, meta_positions(20, exclude, size=10, seed=1))
    assert not torch.equal(a, meta_positions(20, exclude, size=10, seed=2))
    assert sorted(meta_positions(8, exclude, size=10, seed=0).tolist()) == [1, 2, 3, 4, 6]  # all that is left
    with pytest.raises(ValueError, match="held-out training images"):
        meta_positions(3, torch.arange(3), size=2, seed=0)


def test_learned_set_resumes_to_the_same_labels(tiny_lab, tmp_path) -> None:
    prep = tiny_lab.prepared
    y = prep.train_targets
    pos = torch.cat([torch.nonzero(y == c).flatten()[:1] for c in range(prep.num_classes)])
    whole = learned_set_labels(prep, pos, TINY, seed=0, work_dir=tmp_path / "a")

    class Stop(Exception):
        pass

    def stop_at_12(rec):
        if rec["step"] == 11:
            raise Stop

    with pytest.raises(Stop):
        learned_set_labels(prep, pos, TINY, seed=0, work_dir=tmp_path / "b", on_step=stop_at_12)
    resumed = learned_set_labels(prep, pos, TINY, seed=0, work_dir=tmp_path / "b")
    assert torch.equal(whole, resumed)  # 10 steps from the checkpoint, 5 recomputed: bit-identical
    assert torch.allclose(whole.sum(1), torch.ones(len(pos)))
    hard = torch.nn.functional.one_hot(y[pos], prep.num_classes).float()
    assert (whole - hard).abs().max() > 0.05  # the labels moved away from their (smoothed) one-hot start
    assert not torch.equal(whole, learned_set_labels(prep, pos, TINY, seed=1))  # seed = the set's image seed


def test_lab_builds_and_evaluates_a_learned_set(tiny_lab, tiny_student) -> None:
    spec = SetSpec(ipc=1, label=LabelSpec(kind="learned", learner=TINY))
    cset = tiny_lab.build_set(spec)
    assert cset.manifest["label"]["kind"] == "learned" and cset.manifest["experts"] == []
    assert (tiny_lab.out_dir / "learned-labels").is_dir()
    assert torch.equal(cset.labels, tiny_lab.build_set(spec).labels)  # the stored state is reused
    (res,) = tiny_lab.evaluate(spec, student=tiny_student, seeds=(0,))
    assert res["config"]["label"]["kind"] == "learned" and 0.0 <= res["metrics"]["final_acc"] <= 1.0


def _args(**kw):
    base = dict(hard=False, learned=False, learner=None, expert_epoch=None, temperature=None, ensemble=None,
                transform="none", codec=None, ipc=1, selection="random", seed=0, image_codec="raw",
                queries="all")
    return argparse.Namespace(**{**base, **kw})


def test_distill_learned_options() -> None:
    spec = distill_spec(_args(learned=True, learner="bptt:meta_steps=9"))
    assert spec.label.kind == "learned" and "meta_steps=9" in spec.label.learner
    with pytest.raises(ValueError, match="--learned takes no soft-label options; drop --expert-epoch"):
        distill_spec(_args(learned=True, expert_epoch=3))
    with pytest.raises(ValueError, match="add --learned"):
        distill_spec(_args(learner="bptt"))


def test_learned_summary_and_verdict_on_hand_made_rows() -> None:
    from softlabels.studies.learned import summarize, verdict

    def row(kind, mean, lo=None, hi=None):
        r = {"ipc": 1, "labels": kind, "test_mean": mean, "n": 3}
        if kind == "learned":
            r["vs_hard"] = {"gain": mean - 0.40, "gain_lo": lo, "gain_hi": hi}
            r["vs_expert"] = {"gain": mean - 0.55, "gain_lo": -0.20, "gain_hi": -0.05}
        return r

    s = summarize([row("learned", 0.48, 0.02, 0.14), row("expert", 0.55), row("hard", 0.40)],
                  {1: 0.30, 2: 0.12, 3: 0.20}, chosen=2)
    assert (s["vs_hard_verdict"], s["vs_expert_verdict"], s["closest_epoch"], s["jsd_last"]) == \
        ("better", "worse", 2, 0.20)
    text = verdict(1, s)
    assert "beat hard labels" in text and "fall below them" in text and "checkpoint 2" in text
    tie = summarize([row("learned", 0.41, -0.03, 0.05), row("expert", 0.55), row("hard", 0.40)],
                    {1: 0.1}, chosen=1)
    assert "are within the CI of hard labels" in verdict(1, tie)


def test_learned_study_end_to_end(tmp_path, tiny_ds, tiny_data_spec) -> None:
    from softlabels.config import ExpertRecipe, StudentRecipe
    from softlabels.lab import Lab
    from softlabels.presets import Preset
    from softlabels.studies.learned import study_learned

    p = Preset(name="tiny", data=tiny_data_spec,
               expert=ExpertRecipe(model="convnet-d3", width=8, epochs=3, train_images=160, precision="fp32"),
               student=StudentRecipe(model="convnet-d3", width=8, epochs=4, precision="fp32", compile="off"),
               ipcs=(1,), seeds=(0, 1), sweep_epochs=(1, 3), sweep_length=2)
    lab = Lab(tmp_path, data=tiny_data_spec, dataset=tiny_ds, progress=False)
    res = study_learned(lab, preset=p, seeds=(0, 1), learner=TINY, expert_epoch=2)
    assert [r["labels"] for r in res.rows] == ["learned", "expert", "hard"]
    assert all(r["n"] == 2 for r in res.rows)
    jsd = res.settings["jsd_by_epoch"]["1"]
    assert sorted(jsd) == ["1", "2", "3"] and all(0.0 <= v <= 1.0 for v in jsd.values())
    assert res.figures and all(f.exists() for f in res.figures)
    assert "learned labels reach" in res.finding
