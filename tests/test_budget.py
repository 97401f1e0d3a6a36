"""The bytes study, byte-budget answers and ``softlabels budget``: tiny synthetic data, seconds."""

from __future__ import annotations

import json
import struct
from itertools import product

import pytest

import softlabels.engine.executors as executor_mod
from softlabels.analysis.budget import best_within_budget, cells_of
from softlabels.cli import main
from softlabels.config import DataSpec, ExpertRecipe, LabelSpec, StudentRecipe
from softlabels.lab import Lab
from softlabels.main_job import choose_expert_epochs
from softlabels.presets import Preset, get_preset
from softlabels.sets.codecs import image_codec
from softlabels.sets.spec import SetSpec
from softlabels.store import ResultsStore
from softlabels.studies import STUDIES, run_study
from softlabels.studies.bytes import QUICK_CODECS, canonical_codecs
from softlabels.studies.bytes_fill import fill_budget
from softlabels.units import format_bytes, parse_size

IPCS = [1, 2, 4]


@pytest.fixture
def tiny_preset(tiny_data_spec):
    return Preset(
        name="tiny",
        data=tiny_data_spec,
        expert=ExpertRecipe(
            model="convnet-d3",
            width=8,
            epochs=3,
            train_images=200,
            precision="fp32",
            lr=0.05,
            batch_size=32,
            momentum=0.9,
        ),  # an expert that learns: both sweep candidates are above chance
        student=StudentRecipe(model="convnet-d3", width=8, epochs=5, precision="fp32", compile="off"),
        ipcs=(1, 4),
        seeds=(0,),
        sweep_epochs=(1, 3),
        sweep_length=4,
    )


@pytest.fixture
def lab(tmp_path, tiny_ds):
    return Lab(
        tmp_path / "out", data=DataSpec(name="synthetic", val_fraction=0.2), dataset=tiny_ds, progress=False
    )


@pytest.fixture
def counted(monkeypatch):
    calls: list[int] = []
    real = executor_mod.train_student

    def counting(*a, **k):
        calls.append(k["seed"])
        return real(*a, **k)

    monkeypatch.setattr(executor_mod, "train_student", counting)
    return calls


def _dominated(i: int, rows: list[dict]) -> bool:
    a = rows[i]
    return any(
        b["bytes_total"] <= a["bytes_total"]
        and b["test_mean"] >= a["test_mean"]
        and (b["bytes_total"] < a["bytes_total"] or b["test_mean"] > a["test_mean"])
        for b in rows
    )


def test_bytes_study_grid_frontier_and_measured_bytes(lab, tiny_preset, counted, monkeypatch, tmp_path):
    import softlabels.studies.base as base

    monkeypatch.setattr(base, "base_settings", lambda scale: tiny_preset)  # the study's default settings
    assert "bytes" in STUDIES
    res = run_study("bytes", lab, ipcs=IPCS, budgets=["1.5KB"])
    rows, summary = res.rows, res.summary
    codecs = canonical_codecs(QUICK_CODECS)
    # the grid: every IPC x label codec, hard labels without an expert epoch, the shared sweep's epoch (soft)
    assert sorted((r["ipc"], r["label_codec"]) for r in rows) == sorted(product(IPCS, codecs))
    expert = lab.expert(tiny_preset.expert)
    chosen = choose_expert_epochs(lab, tiny_preset, expert, ipcs=IPCS).chosen  # the one chooser (stored runs)
    assert summary["expert_epochs"] == {str(i): [chosen[i]] for i in IPCS} and set(chosen.values()) <= {1, 3}
    assert all(r["expert_epoch"] == (None if r["label_codec"] == "hard" else chosen[r["ipc"]]) for r in rows)
    n_cells = len(rows)
    assert len(counted) == n_cells + 2 * len(IPCS)  # one student per cell + the 2-candidate sweep per IPC
    # the image codec is the smallest measured one, and its bytes are the encoded images' bytes
    totals = {c: v["total"] for c, v in summary["image_codec_bytes"].items()}
    ic = min(totals, key=totals.get)
    assert summary["image_codec"] == [ic] and all(r["image_codec"] == ic for r in rows)
    # measured bytes: the row, the store, cset.nbytes and the file on disk agree
    stored = {(r.config["ipc"], r.config["codec"]): r for r in lab.store.query(study="bytes")}
    assert len(stored) == n_cells
    for r in rows:
        label = (
            LabelSpec(kind="hard", codec="hard")
            if r["label_codec"] == "hard"
            else LabelSpec(kind="soft", expert_epoch=chosen[r["ipc"]], codec=r["label_codec"])
        )
        cset = SetSpec(ipc=r["ipc"], label=label, image_codec=r["image_codec"]).build(
            lab.prepared, experts=[expert]
        )
        nb = cset.nbytes
        assert (nb["images"], nb["labels"], nb["total"]) == (
            r["bytes_images"],
            r["bytes_labels"],
            r["bytes_total"],
        )
        assert nb["images"] == summary["image_codec_bytes"][ic][str(r["ipc"])]
        assert nb["images"] == image_codec(ic).encode(cset.images).nbytes
        rec = stored[(r["ipc"], r["label_codec"])]
        assert rec.nbytes == r["bytes_total"] and rec.codec == f"{ic}|{r['label_codec']}"
        path = cset.save(
            tmp_path / f"set-{r['ipc']}-{len(r['label_codec'])}-{r['label_codec'][:4]}.safetensors"
        )
        data = path.read_bytes()
        header_len = struct.unpack("<Q", data[:8])[0]
        assert len(data) == 8 + header_len + r["bytes_total"] + nb["aux"]
        assert nb["aux"] == 8 * len(cset) == 8 * 4 * r["ipc"]
    # the frontier is exactly the non-dominated rows (brute force); the hard frontier only hard rows
    front = [i for i, r in enumerate(rows) if r["on_frontier"]]
    assert front and all(not _dominated(i, rows) for i in front)
    for i, r in enumerate(rows):
        if not r["on_frontier"]:
            assert _dominated(i, rows) or any(
                rows[j]["bytes_total"] == r["bytes_total"] and rows[j]["test_mean"] == r["test_mean"]
                for j in front
            )
    hard = [r for r in rows if r["label_codec"] == "hard"]
    assert any(r["on_hard_frontier"] for r in hard)
    assert all(r["label_codec"] == "hard" for r in rows if r["on_hard_frontier"])
    assert all(not _dominated(hard.index(r), hard) for r in hard if r["on_hard_frontier"])
    # budgets: defaults plus the one passed, soft-vs-hard difference when both fit
    assert [b["bytes"] for b in summary["budgets"]] == [1500, 8000, 64000, 512000]
    for b in summary["budgets"]:
        s, h = b["best_soft"], b["best_hard"]
        assert s is None or (s["bytes_total"] <= b["bytes"] and s["label_codec"] != "hard")
        assert h is None or (h["bytes_total"] <= b["bytes"] and h["label_codec"] == "hard")
        if s and h:
            assert b["soft_minus_hard_points"] == pytest.approx(100 * (s["mean"] - h["mean"]), abs=0.01)
    assert res.finding and "1.5KB" in res.finding
    folder = lab.out_dir / "studies" / "bytes"
    assert (folder / "bytes.png").exists() and (folder / "bytes.svg").exists()
    assert (folder / "table.csv").read_text().splitlines()[0].startswith("ipc,expert_epoch,label_codec")
    assert json.loads((folder / "summary.json").read_text())["name"] == "bytes"
    # a re-run trains nothing
    counted.clear()
    again = run_study("bytes", lab, ipcs=IPCS, budgets=["1.5KB"])
    assert counted == [] and [r["test_mean"] for r in again.rows] == [r["test_mean"] for r in rows]


def _run(
    ipc: int,
    kind: str,
    codec: str,
    nbytes: int,
    test: float,
    val: float,
    *,
    seed: int = 0,
    dataset: str = "fmnist",
    study: str = "s",
    epoch: int | None = 2,
) -> dict:
    cfg = {
        "study": study,
        "dataset": dataset,
        "ipc": ipc,
        "seed": seed,
        "codec": codec,
        "label": {"kind": kind, "transform": "none", "codec": codec},
        "expert_epoch": epoch if kind == "soft" else None,
    }
    return {
        "config": cfg,
        "metrics": {"test_acc": test, "val_acc": val, "nbytes_images": nbytes - 10, "nbytes_labels": 10},
        "nbytes": nbytes,
        "codec": f"raw|{codec}",
    }


HAND = [
    _run(1, "hard", "hard", 800, 0.30, 0.31),
    _run(10, "hard", "hard", 7900, 0.60, 0.58),
    _run(50, "hard", "hard", 39000, 0.75, 0.74),
    _run(1, "soft", "fp16", 1000, 0.45, 0.47),
    _run(5, "soft", "fp16", 5000, 0.66, 0.70, seed=0),
    _run(5, "soft", "fp16", 5000, 0.70, 0.68, seed=1),  # same cell, second seed
    _run(5, "soft", "fp32", 6000, 0.71, 0.66),  # best test within 8 KB, but not best on validation
    _run(20, "soft", "fp32", 40000, 0.82, 0.80),
]


def test_best_within_budget_on_hand_made_rows(tmp_path):
    a = best_within_budget(HAND, "8KB")
    assert (a.ipc, a.label_kind, a.label_codec, a.expert_epoch, a.image_codec) == (
        5,
        "soft",
        "fp16",
        2,
        "raw",
    )
    assert a.mean == pytest.approx(0.68) and a.std == pytest.approx(0.02) and a.n == 2  # seeds averaged
    assert a.val_mean == pytest.approx(0.69) and a.selected_on == "val_acc"
    assert (a.bytes_images, a.bytes_labels, a.bytes_total, a.budget, a.fits) == (4990, 10, 5000, 8000, 5)
    assert a.traded == (
        "+8.0 points over hard labels at IPC 10 (7.9 KB, 60.0%); the unconstrained best "
        "(82.0%, IPC 20, soft labels (epoch 2, fp32), raw images) needs 40.0 KB"
    )
    t = best_within_budget(HAND, 8000, select_on="test_acc")
    assert (t.ipc, t.label_codec, t.mean) == (5, "fp32", 0.71)
    h = best_within_budget(HAND, "8KB", label_kind="hard")
    assert (h.ipc, h.label_kind, h.mean) == (10, "hard", 0.60)
    assert h.traded.startswith("-8.0 points over soft labels at IPC 5, fp16 (5.0 KB, 68.0%)")
    assert best_within_budget(HAND, 799) is None  # nothing fits
    assert best_within_budget(HAND, 800).ipc == 1 and best_within_budget(HAND, 800).label_kind == "hard"
    top = best_within_budget(HAND, "1MB")
    assert (top.ipc, top.mean) == (20, 0.82) and top.traded.endswith("no stored set of any size does better")
    # several datasets must be told apart; the same rows through a store give the same answer
    with pytest.raises(ValueError, match="several datasets"):
        best_within_budget([*HAND, _run(1, "hard", "hard", 10, 0.9, 0.9, dataset="other")], 8000)
    assert (
        best_within_budget(
            [*HAND, _run(1, "hard", "hard", 10, 0.9, 0.9, dataset="other")], 8000, dataset="fmnist"
        )
        == a
    )
    with ResultsStore(tmp_path / "results.sqlite") as store:
        for r in HAND:
            store.put(r["config"], r["metrics"], study="s", nbytes=r["nbytes"], codec=r["codec"])
        assert best_within_budget(store, "8KB") == a
        assert best_within_budget(store, "8KB", study="other") is None
    assert best_within_budget(tmp_path, "8KB") == a  # an output folder
    assert len(cells_of(HAND)) == 7 and len(cells_of(HAND, label_kind="hard")) == 3


def test_format_and_parse_sizes():
    assert [parse_size(s) for s in ("64KB", "1MB", "1.5MiB", "4096", "1KiB")] == [
        64000,
        10**6,
        1572864,
        4096,
        1024,
    ]
    assert [format_bytes(n) for n in (512, 7900, 39000, 512000, 1_500_000)] == [
        "512 B",
        "7.9 KB",
        "39.0 KB",
        "512 KB",
        "1.5 MB",
    ]


def test_fill_budget_runs_only_missing_cells(lab, tiny_preset, counted):
    budget = 3000
    ans = fill_budget(lab, budget, preset=tiny_preset, expert_epoch=2, ipcs=[1, 2, 5, 10, 20])
    runs = lab.store.query(study="bytes")
    assert counted and len(counted) == len(runs)
    assert all(budget / 4 <= r.nbytes <= budget for r in runs)
    # per-image label codecs: IPC 1 is under a quarter, IPC 10 over the budget; a projector's head has the
    # same size at every IPC, which lifts its IPC 1 set into the band
    assert {r.config["ipc"] for r in runs if not r.config["codec"].startswith("projector")} == {2, 5}
    heads = {r.config["ipc"]: r.metrics["nbytes_labels"] for r in runs
             if r.config["codec"].startswith("projector")}
    assert sorted(heads) == [1, 2, 5] and len(set(heads.values())) == 1
    assert {r.config["codec"] for r in runs} == set(canonical_codecs(QUICK_CODECS))
    assert ans is not None and ans.bytes_total <= budget and ans.study == "bytes"
    assert ans == best_within_budget(lab.store, budget, dataset="synthetic", study="bytes")
    counted.clear()
    assert fill_budget(lab, budget, preset=tiny_preset, expert_epoch=2, ipcs=[1, 2, 5, 10, 20]) == ans
    assert counted == []  # everything was stored
    hard_only = fill_budget(lab, 600, preset=tiny_preset, expert_epoch=2, ipcs=[1, 2], label_kind="hard")
    assert counted == [0] and hard_only.label_kind == "hard" and hard_only.ipc == 1  # largest set that fits


def test_budget_cli_sizes_and_no_fit_message(tmp_path, capsys):
    out = tmp_path / "empty"
    assert main(["budget", "1KB", "--out", str(out)]) == 1
    text = capsys.readouterr().out
    assert "No stored configuration" in text and "1,000 bytes" in text
    assert "--fill" in text and "softlabels study bytes" in text and not (out / "results.sqlite").exists()
    assert main(["budget", "12XB", "--out", str(out)]) == 2
    assert "unknown size unit" in capsys.readouterr().err
    assert main(["budget", "lots", "--out", str(out)]) == 2
    assert "cannot parse size" in capsys.readouterr().err
    # a store with runs of the default preset's data split answers; 1.5MiB parses to 1,572,864 bytes
    data = get_preset("default").data
    with ResultsStore(tmp_path / "full" / "results.sqlite") as store:
        for r in HAND:
            cfg = dict(r["config"], dataset=data.name, data=data.to_dict())
            store.put(cfg, r["metrics"], study="s", nbytes=r["nbytes"], codec=r["codec"])
    assert main(["budget", "8KB", "--out", str(tmp_path / "full")]) == 0
    text = capsys.readouterr().out
    assert "chosen" in text and "+8.0 points over hard labels" in text
    assert main(["budget", "1.5MiB", "--out", str(tmp_path / "full"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["budget"] == 1572864 and got["ipc"] == 20
    assert main(["budget", "700", "--out", str(tmp_path / "full")]) == 1
    assert "smallest stored set needs 800 B" in capsys.readouterr().out
