"""Label-quality diagnostics: cleanlab's label issues on hand-made soft labels with known answers, the one
report beside our own diagnostics, ``diagnose_set`` on a set and its pool, and ``softlabels diagnose``."""

from __future__ import annotations

import builtins
import json
import math

import pytest
import torch

from softlabels.config import ExpertRecipe, LabelSpec
from softlabels.labels.diagnostics import label_issues, label_report

C = 3


def _labels():
    """30 samples of 3 classes: every label puts 0.8 on its class, except sample 4 (class 1) which puts
    0.9 on class 2: the one label that contradicts its class."""
    t = torch.arange(30) % C
    p = torch.full((30, C), 0.1)
    p[torch.arange(30), t] = 0.8
    p[4] = torch.tensor([0.05, 0.05, 0.9])
    return p, t


def test_label_issues_flags_the_contradicted_label_with_known_scores():
    pytest.importorskip("cleanlab")
    p, t = _labels()
    li = label_issues(p, t)
    # self-confidence is p_y: 0.8 everywhere, 0.05 for sample 4
    expected = torch.full((30,), 0.8, dtype=torch.float64)
    expected[4] = 0.05
    assert torch.allclose(li.quality, expected, atol=1e-6)
    assert li.is_issue.nonzero().flatten().tolist() == [4] and li.ranked.tolist() == [4]
    # normalized margin (p_y - max_{k != y} p_k + 1) / 2: (0.8 - 0.1 + 1) / 2 and (0.05 - 0.9 + 1) / 2
    nm = label_issues(p, t, method="normalized_margin").quality
    assert math.isclose(float(nm[0]), 0.85, abs_tol=1e-6) and math.isclose(float(nm[4]), 0.075, abs_tol=1e-6)


def test_label_issues_renormalises_rows_and_checks_inputs():
    pytest.importorskip("cleanlab")
    p, t = _labels()
    half = label_issues(p / 2, t)  # sub-stochastic rows (e.g. after top-k) are read as distributions
    assert torch.allclose(half.quality, label_issues(p, t).quality)
    zero = p.clone()
    zero[3] = 0
    with pytest.raises(ValueError, match="all zero"):
        label_issues(zero, t)
    with pytest.raises(ValueError, match="method"):
        label_issues(p, t, method="confidence")
    with pytest.raises(ValueError, match="filter_by"):
        label_issues(p, t, filter_by="prune")


def test_one_image_per_class_is_never_flagged_but_still_ranked():
    pytest.importorskip("cleanlab")
    t = torch.arange(4)
    p = torch.full((4, 4), 0.1)
    p[t, t] = 0.7
    p[2] = torch.tensor([0.7, 0.1, 0.1, 0.1])  # contradicts class 2, but it is that class's only image
    li = label_issues(p, t)
    assert not bool(li.is_issue.any())
    assert int(li.quality.argmin()) == 2


def test_missing_cleanlab_names_the_extra(monkeypatch):
    real = builtins.__import__

    def no_cleanlab(name, *a, **k):
        if name.startswith("cleanlab"):
            raise ImportError("no cleanlab")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_cleanlab)
    p, t = _labels()
    with pytest.raises(ImportError, match=r"pip install 'softlabels\[labels\]'"):
        label_issues(p, t)
    rep = label_report(p, t, cleanlab=False)  # our own diagnostics need no cleanlab
    assert "cleanlab" not in rep and rep["worst"][0]["index"] == 4


def test_label_report_puts_ours_and_cleanlabs_side_by_side():
    pytest.importorskip("cleanlab")
    p, t = _labels()
    rep = label_report(p, t, top=2)
    assert rep["n"] == 30
    assert [w["index"] for w in rep["worst"]] == [4, 0]  # lowest p_true first, ties by index
    assert rep["worst"][0]["argmax"] == 2 and math.isclose(rep["worst"][0]["p_true"], 0.05, abs_tol=1e-6)
    # class 1's mean label mass on class 2: nine rows of 0.1 and one of 0.9 -> 0.18, the strongest overlap
    top = rep["class_overlaps"][0]
    assert (top["cls"], top["other"]) == (1, 2) and math.isclose(top["mass"], 0.18, abs_tol=1e-6)
    assert math.isclose(rep["summary"]["accuracy"], 29 / 30)
    c = rep["cleanlab"]
    assert c["num_issues"] == 1 and c["issues"] == [4] and math.isclose(c["issue_fraction"], 1 / 30)
    per = rep["per_sample"]
    assert per["cleanlab_issue"][4] and sum(per["cleanlab_issue"]) == 1
    assert per["p_true"] == pytest.approx(per["cleanlab_quality"])  # both are self-confidence
    assert "per_sample" not in label_report(p, t, per_sample=False)


# -------------------------------------------------------------------------------------- a set and its pool
@pytest.fixture(scope="module")
def made(tmp_path_factory):
    from softlabels.lab import Lab
    from softlabels.presets import get_preset
    from softlabels.sets.spec import SetSpec

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("diagnose")
    data = get_preset("default").data.replace(name="synthetic")  # what `--dataset synthetic` loads
    with Lab(out, data=data, progress=False, workers=1) as lab:
        expert = lab.expert(ExpertRecipe(model="convnet-d3", width=8, epochs=2, train_images=100,
                                         precision="fp32"))
        spec = SetSpec(ipc=3, label=LabelSpec(kind="soft", expert_epoch=2), image_seed=5)
        cset = lab.build_set(spec, experts=[expert])
        path = cset.save(out / "set.safetensors")
    return out, data, path, cset


def test_diagnose_set_places_each_set_image_in_its_pool(made):
    pytest.importorskip("cleanlab")
    from softlabels.diagnose import diagnose_set
    from softlabels.lab import Lab
    from softlabels.labels.diagnostics import true_class_prob

    out, data, path, cset = made
    with Lab(out, data=data, progress=False, workers=1) as lab:
        d = diagnose_set(lab, path, pool=True, top=3)
        pool_n = int(lab.prepared.train_idx.numel())
        where = {int(s): i for i, s in enumerate(lab.prepared.train_idx.tolist())}
        targets = lab.prepared.train_targets
    assert d.set_report["n"] == len(cset) and d.pool_report["n"] == pool_n
    q_set = true_class_prob(cset.labels, cset.targets)
    assert d.set_report["per_sample"]["p_true"] == pytest.approx(q_set.tolist(), abs=1e-6)
    assert len(d.set_in_pool) == len(cset)
    for i, row in enumerate(d.set_in_pool):
        assert row["pool_position"] == where[cset.manifest["source_indices"][i]]
        assert int(targets[row["pool_position"]]) == int(cset.targets[i])
        # the pool's label of that image is the set's label (same expert, epoch and temperature)
        assert math.isclose(row["p_true"], float(q_set[i]), abs_tol=1e-4)
        assert 0.0 <= row["class_percentile"] < 1.0 and isinstance(row["pool_issue"], bool)
    saved = json.loads(d.save(out / "diag.json").read_text())
    assert saved["pool"]["n"] == pool_n and len(saved["set_in_pool"]) == len(cset)


def test_softlabels_diagnose_cli(made, capsys):
    pytest.importorskip("cleanlab")
    from softlabels.cli import main

    out, _, path, cset = made
    rc = main(["diagnose", str(path), "--out", str(out), "--dataset", "synthetic", "--quiet", "--pool",
               "--top", "2", "--json", str(out / "cli.json")])
    text = capsys.readouterr().out
    assert rc == 0
    assert f"set: {len(cset)} images" in text and "pool:" in text and "cleanlab flags" in text
    rep = json.loads((out / "cli.json").read_text())
    assert len(rep["set"]["worst"]) == 2 and "cleanlab" in rep["pool"]
    assert main(["diagnose", str(path), "--out", str(out), "--dataset", "synthetic", "--quiet",
                 "--no-cleanlab"]) == 0
    assert "cleanlab" not in capsys.readouterr().out


def test_selections_cli_lists_the_pruning_methods_and_budgets(capsys):
    from softlabels.cli import main

    assert main(["selections"]) == 0
    text = capsys.readouterr().out
    for name in ("random", "ce-bin", "el2n", "grand", "forgetting", "aum", "ccs", "herding", "kcenter",
                 "uncertainty", "diversity"):
        assert name in text


def test_distill_select_and_queries_options_reach_the_set_spec():
    from softlabels.cli import build_parser
    from softlabels.cli.jobs import distill_spec

    parser = build_parser()

    def parse(*argv):
        return parser.parse_args(["distill", "-o", "set.safetensors", *argv])

    args = parse("--ipc", "10", "--select", "el2n:epoch=3,keep=easy",
                 "--queries", "uncertainty:q=20,proxy=1", "--expert-epoch", "5")
    spec = distill_spec(args)
    assert spec.selection == "el2n:epoch=3,keep=easy"
    assert spec.queries == "uncertainty:q=20,proxy=1,measure=entropy,rest=hard"
    assert distill_spec(parse("--ipc", "1", "--hard")).queries == "all"
    with pytest.raises(ValueError, match="must be an earlier checkpoint"):
        distill_spec(parse("--ipc", "1", "--queries", "uncertainty:q=2,proxy=5", "--expert-epoch", "5"))
    with pytest.raises(ValueError, match="query budget limits expert soft labels"):
        distill_spec(parse("--ipc", "1", "--queries", "random:q=2", "--hard"))
