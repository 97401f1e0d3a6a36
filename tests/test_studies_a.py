"""Studies expert-epoch / temperature / swap / knowledge, the study CLI and the report on tiny synthetic data.

The four studies run once per module on a 4-class synthetic dataset with width-8 networks; the other tests
re-run them with training disabled (resumption) or inspect what they wrote.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from tiny import DATA, C, tiny_preset

import softlabels.engine.executors as executor_mod
from softlabels.cli.common import parse_value
from softlabels.config import LabelSpec
from softlabels.data.synthetic import make_synthetic
from softlabels.lab import Lab
from softlabels.registry import UnknownNameError
from softlabels.studies import STUDIES, run_study
from softlabels.studies import base as study_base
from softlabels.studies.knowledge import knowledge_spec, pick_subjects
from softlabels.validation import DataNotFoundError

TINY = tiny_preset((0, 1))
# study name -> the tiny grid each test run uses
OPTIONS = {
    "expert-epoch": {"ipcs": [1, 2]},
    "temperature": {"ipcs": [2], "epochs": [1, 3], "temperatures": [1, 2.5]},
    "swap": {"ipcs": [1, 2]},
    "knowledge": {"ipcs": [1, 2]},
}
FIGURES = {"expert-epoch": "expert_epoch", "temperature": "temperature", "swap": "swap",
           "knowledge": "knowledge"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks on a shared 2-core machine run far faster on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def dataset():
    return make_synthetic(num_classes=C, n_train=240, n_test=80, size=12)


def make_lab(path: Path) -> Lab:
    return Lab(path, data=DATA, dataset=dataset(), progress=False)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    lab = make_lab(tmp_path_factory.mktemp("studies"))
    results = {name: run_study(name, lab, preset=TINY, **opts) for name, opts in OPTIONS.items()}
    return lab, results


def finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def same_rows(a: list[dict], b: list[dict]) -> bool:
    """Row equality with NaN == NaN (e.g. a relative accuracy against a zero reference)."""
    def key(rows):
        return [{k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
                for r in rows]

    return key(a) == key(b)


# ---------------------------------------------------------------------------------------------------------
# each study: grid cells, numbers, files


@pytest.mark.parametrize("name", list(OPTIONS))
def test_study_writes_table_summary_and_figures(ran, name):
    lab, results = ran
    folder = study_base.study_dir(lab, name)
    for f in (f"{FIGURES[name]}.png", f"{FIGURES[name]}.svg", "summary.json", "table.csv"):
        assert (folder / f).stat().st_size > 0, f
    s = json.loads((folder / "summary.json").read_text())
    assert s["name"] == name and s["protocol"] == "clean" and s["finding"] and s["rows"]
    assert s["settings"]["seeds"] == [0, 1] and "expert" in s["settings"]
    assert results[name].finding == s["finding"]
    for r in results[name].rows:
        assert r["n"] == 2
        assert finite(r["test_mean"]) and finite(r["test_std"])


def test_expert_epoch_grid_and_choice(ran):
    _, results = ran
    res = results["expert-epoch"]
    assert [(r["ipc"], r["expert_epoch"]) for r in res.rows] == [(i, e) for i in (1, 2) for e in (1, 2, 3)]
    for r in res.rows:
        assert finite(r["expert_acc"]) and finite(r["val_mean"])
        assert 0 < r["label_entropy"] <= math.log(C) + 1e-6
    for ipc in ("1", "2"):
        chosen = json.loads(json.dumps(res.summary))["chosen"][ipc]
        cells = [r for r in res.rows if r["ipc"] == int(ipc)]
        assert chosen["val_mean"] == max(r["val_mean"] for r in cells)
    assert "epoch" in res.finding


def test_temperature_grid(ran):
    _, results = ran
    res = results["temperature"]
    cells = [(r["expert_epoch"], r["temperature"]) for r in res.rows]
    assert cells == [(e, t) for e in (1, 3) for t in (1.0, 2.5)]
    by = {(r["expert_epoch"], r["temperature"]): r["label_entropy"] for r in res.rows}
    assert by[(3, 2.5)] > by[(3, 1.0)]  # a higher true temperature flattens the labels
    assert res.summary["2"]["best_t1"]["temperature"] == 1.0
    assert res.finding.startswith("IPC 2")


def test_swap_covers_every_rank_and_is_relative_to_unswapped(ran):
    _, results = ran
    res = results["swap"]
    for ipc in (1, 2):
        rows = [r for r in res.rows if r["ipc"] == ipc]
        assert sorted(r["i"] for r in rows if r["variant"] == "swap") == list(range(1, C))
        soft = next(r for r in rows if r["variant"] == "soft")
        hard = next(r for r in rows if r["variant"] == "hard")
        assert soft["relative"] == pytest.approx(1.0) and hard["expert_epoch"] is None
        for r in rows:
            assert r["relative"] == pytest.approx(r["test_mean"] / soft["test_mean"])
    assert set(res.summary["1"]["relative_by_i"]) == {"1", "2", "3"}


def test_knowledge_rows_per_subject_and_treatment(ran):
    _, results = ran
    res = results["knowledge"]
    subjects = res.settings["subjects"]
    assert len(subjects) == 3 and len(set(subjects)) == 3
    keys = {(r["ipc"], r["subject"], r["treatment"]) for r in res.rows}
    assert keys == {(i, s, t) for i in (1, 2) for s in subjects
                    for t in ("control", "remove-images", "remove-knowledge")}
    for r in res.rows:
        assert 0.0 <= r["subject_mean"] <= 1.0 and r["subject_name"] == f"class{r['subject']}"
    assert res.summary["1"]["chance"] == pytest.approx(1 / C)


# ---------------------------------------------------------------------------------------------------------
# knowledge set builders


def test_knowledge_set_builders(ran):
    lab, _ = ran
    expert = lab.expert(TINY.expert)
    label = LabelSpec(kind="soft", expert_epoch=2)
    def knowledge_set(*, subject, treatment, renorm=False):
        spec = knowledge_spec(label, ipc=3, image_seed=0, subject=subject, treatment=treatment, renorm=renorm)
        return lab.build_set(spec, experts=[expert])

    control = knowledge_set(subject=1, treatment="control")
    images = knowledge_set(subject=1, treatment="remove-images")
    know = knowledge_set(subject=1, treatment="remove-knowledge")
    keep = control.targets != 1
    # remove-images: no subject images; the others keep their labels, including mass on the subject column
    assert len(images) == 3 * (C - 1) and not (images.targets == 1).any()
    assert torch.equal(images.images, control.images[keep])
    assert torch.allclose(images.labels, control.labels[keep]) and (images.labels[:, 1] > 0).all()
    assert images.nbytes["total"] < control.nbytes["total"] and images.manifest["removed_class"] == 1
    # remove-knowledge: subject column zero on other classes' rows, everything else untouched (no renorm)
    assert torch.equal(know.images, control.images)
    assert (know.labels[keep, 1] == 0).all()
    assert torch.allclose(know.labels[~keep], control.labels[~keep])
    others = [c for c in range(C) if c != 1]
    assert torch.allclose(know.labels[:, others], control.labels[:, others])
    assert (know.labels[keep].sum(1) < 1).all()
    renormed = knowledge_set(subject=1, treatment="remove-knowledge", renorm=True)
    assert torch.allclose(renormed.labels.sum(1), torch.ones(len(renormed)), atol=1e-5)
    spec = knowledge_spec(label, ipc=3, image_seed=0, subject=2, treatment="remove-knowledge")
    assert spec.label.transform == "remove-class:cls=2,renorm=0" and spec.treatment == "none"
    assert knowledge_spec(label, ipc=3, image_seed=0, subject=2, treatment="remove-images").treatment == \
        "drop-class:cls=2"
    with pytest.raises(ValueError, match="treatment"):
        knowledge_set(subject=1, treatment="remove-all")
    for t in ("remove-images", "remove-knowledge"):
        with pytest.raises(ValueError, match="cls must be in"):
            knowledge_set(subject=C, treatment=t)


def test_pick_subjects_spreads_over_difficulty():
    acc = [0.9, 0.5, 0.7, 0.95, 0.6]
    assert pick_subjects(acc, 3) == [3, 2, 1]  # easiest, middle, hardest
    assert sorted(pick_subjects(acc, 5)) == [0, 1, 2, 3, 4]
    assert pick_subjects(acc, 1) == [3]


# ---------------------------------------------------------------------------------------------------------
# options


@pytest.mark.parametrize("name, opts, err", [
    ("expert-epoch", {"epochs": [1, 9]}, ValueError),
    ("expert-epoch", {"seeds": 0}, ValueError),
    ("expert-epoch", {"seeds": 2}, TypeError),  # a count: seeds are named, e.g. range(2)
    ("expert-epoch", {"seeds": [0, 0]}, ValueError),
    ("expert-epoch", {"ipcs": []}, TypeError),
    ("expert-epoch", {"scale": "huge"}, ValueError),
    ("temperature", {"temperatures": [2, 3]}, ValueError),
    ("temperature", {"temperatures": [1, -1]}, ValueError),
    ("swap", {"swaps": [C]}, ValueError),
    ("swap", {"expert_epoch": 7}, ValueError),
    ("knowledge", {"subjects": [C]}, ValueError),
    ("knowledge", {"subjects": [0], "n_subjects": 1}, ValueError),
    ("knowledge", {"renorm": "yes"}, TypeError),
])
def test_options_are_validated(ran, name, opts, err):
    lab, _ = ran
    scale = opts.pop("scale", "quick")
    with pytest.raises(err):
        STUDIES.get(name)(lab, scale=scale, preset=TINY, **opts)


# ---------------------------------------------------------------------------------------------------------
# resumption


def _no_training(*args, **kwargs):
    raise AssertionError("train_student must not be called: every cell is stored")


@pytest.mark.parametrize("name", list(OPTIONS))
def test_rerun_recomputes_nothing(ran, monkeypatch, name):
    lab, results = ran
    monkeypatch.setattr(executor_mod, "train_student", _no_training)
    again = run_study(name, lab, preset=TINY, **OPTIONS[name])
    assert same_rows(again.rows, results[name].rows) and again.finding == results[name].finding


def test_quick_scale_uses_base_settings(ran, monkeypatch):
    lab, results = ran
    monkeypatch.setattr(study_base, "base_settings", lambda scale: TINY)
    monkeypatch.setattr(executor_mod, "train_student", _no_training)
    assert same_rows(run_study("swap", lab, scale="quick", **OPTIONS["swap"]).rows, results["swap"].rows)


def test_interrupted_study_trains_only_missing_cells(tmp_path, monkeypatch):
    real = executor_mod.train_student
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        if calls["n"] >= 3:
            raise RuntimeError("interrupted")
        calls["n"] += 1
        return real(*args, **kwargs)

    lab = make_lab(tmp_path)
    monkeypatch.setattr(executor_mod, "train_student", flaky)
    with pytest.raises(RuntimeError, match="interrupted"):
        run_study("expert-epoch", lab, preset=TINY, **OPTIONS["expert-epoch"])
    assert len(lab.store) == 3

    counted = {"n": 0}

    def counting(*args, **kwargs):
        counted["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(executor_mod, "train_student", counting)
    res = run_study("expert-epoch", lab, preset=TINY, **OPTIONS["expert-epoch"])
    total = sum(r["n"] for r in res.rows)
    assert total == 12 and counted["n"] == total - 3 and len(lab.store) == total


# ---------------------------------------------------------------------------------------------------------
# CLI and report


def test_cli_lists_studies(capsys):
    from softlabels.cli import main

    assert main(["studies"]) == 0
    out = capsys.readouterr().out
    for name in OPTIONS:
        assert name in out
    assert main(["study", "--list"]) == 0
    assert "swap" in capsys.readouterr().out


def test_cli_unknown_study_and_option(capsys, tmp_path):
    from softlabels.cli import main

    assert main(["study", "swapp", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown study 'swapp'" in err and "Did you mean 'swap'" in err
    assert main(["study", "temperature", "--out", str(tmp_path), "-O", "temps=1,2"]) == 2
    err = capsys.readouterr().err
    assert "does not take temps" in err and "temperatures" in err
    assert main(["study", "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "results.sqlite").exists()


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("2.5") == 2.5 and parse_value("true") is True
    assert parse_value("1,4,10") == [1, 4, 10] and parse_value("none") is None and parse_value("abc") == "abc"


def test_cli_runs_a_study_end_to_end(tmp_path, monkeypatch, capsys):
    from softlabels.cli import main

    monkeypatch.setattr(study_base, "base_settings", lambda scale: TINY)
    rc = main(["study", "swap", "--out", str(tmp_path), "--quiet", "--device", "cpu", "--ipc", "1",
               "--seeds", "1", "-O", "swaps=1,3"])
    out = capsys.readouterr().out
    assert rc == 0 and "finding:" in out and "studies" in out
    rows = json.loads((tmp_path / "studies" / "swap" / "summary.json").read_text())["rows"]
    cells = sorted((r["variant"], r["i"] or 0) for r in rows)
    assert cells == [("hard", 0), ("soft", 0), ("swap", 1), ("swap", 3)]


def test_build_report(ran, tmp_path, capsys):
    from softlabels.cli import main
    from softlabels.report.build import build_report

    lab, results = ran
    out = tmp_path / "out"
    shutil.copytree(lab.out_dir / "studies", out / "studies")
    for f in lab.out_dir.glob("results.sqlite*"):  # with its WAL file
        shutil.copy(f, out / f.name)
    main_report = ("# Soft-label baseline on synthetic\n\n| IPC | labels |\n|---:|---|\n| 1 | soft |\n\n"
                   "## Settings\n")
    (out / "report.md").write_text(main_report)
    (out / "baseline.png").write_bytes(b"png")
    path = build_report(out, html=True)
    assert path == out / "report-all.md" and (out / "report.md").read_text() == main_report
    md = path.read_text()
    for name, res in results.items():
        assert res.finding in md
        assert f"](studies/{name}/{FIGURES[name]}.png)" in md
        assert f"Stored runs for study `{name}`: {len(lab.store.query(study=name))}" in md
    assert "| ipc | expert_epoch | expert_acc |" in md  # the study's column order, not sorted keys
    assert "#### Settings" in md and "![accuracy vs IPC](baseline.png)" in md and "*Protocol:* clean" in md
    html = (out / "report-all.html").read_text()
    assert '<img alt="swap: swap" src="studies/swap/swap.png">' in html and "<table>" in html
    assert main(["report", "--out", str(out)]) == 0 and "report-all.md" in capsys.readouterr().out


def test_build_report_is_read_only(tmp_path):
    from softlabels.report.build import build_report

    with pytest.raises(DataNotFoundError):
        build_report(tmp_path / "missing")
    path = build_report(tmp_path)
    assert "no results store" in path.read_text() and not (tmp_path / "results.sqlite").exists()


def test_unknown_study_error_names_closest():
    with pytest.raises(UnknownNameError, match="Did you mean 'knowledge'"):
        STUDIES.get("knowledg")
