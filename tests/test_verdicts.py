"""Each study's verdict on hand-made rows: the claim follows the numbers, both ways."""

from __future__ import annotations

import math

from softlabels.studies import (
    bytes as bytes_study,
)
from softlabels.studies import (
    ensemble,
    expert_epoch,
    knowledge,
    labels_study,
    scaling,
    selection_study,
    swap,
    temperature,
)


def test_expert_epoch_verdict():
    def chosen(epoch, val, last_val):
        return {
            "epoch": epoch,
            "test_mean": 0.5,
            "test_std": 0.01,
            "val_mean": val,
            "last_epoch_test_mean": 0.4,
            "last_epoch_val_mean": last_val,
            "gain_over_last": 0.1,
        }

    good = expert_epoch.verdict({1: chosen(2, 0.6, 0.5), 10: chosen(5, 0.8, 0.7)}, 10)
    assert good.endswith("consistent with the paper.") and "every IPC prefers an early-stopped expert" in good
    assert "the optimal epoch grows with IPC" in good
    flat = expert_epoch.verdict({1: chosen(10, 0.6, 0.6), 10: chosen(10, 0.8, 0.8)}, 10)
    assert flat.endswith("not consistent with the paper.") and "no IPC prefers" in flat
    tie = expert_epoch.verdict({1: chosen(3, 0.6, 0.6)}, 10)  # earlier but only tied on validation
    assert "no IPC prefers an early-stopped expert" in tie
    assert expert_epoch.verdict({}, 10).startswith("No validation accuracy")


def _t(e, t, val, test, std=0.01):
    return {"expert_epoch": e, "temperature": t, "val_mean": val, "test_mean": test, "test_std": std}


def test_temperature_verdict():
    rows = [_t(1, 1.0, 0.70, 0.70), _t(1, 2.0, 0.65, 0.66), _t(5, 1.0, 0.60, 0.60), _t(5, 2.0, 0.66, 0.64)]
    s = temperature.summarize(rows, last=5)
    assert s["best_t1"]["expert_epoch"] == 1 and s["best_later_any_t"]["temperature"] == 2.0
    text = temperature.verdict(10, s)
    assert "does not fully compensate" in text and "within one seed std" not in text
    rescued = [_t(1, 1.0, 0.70, 0.70), _t(5, 1.0, 0.60, 0.60), _t(5, 2.0, 0.72, 0.73)]
    assert "does compensate (unlike the paper)" in temperature.verdict(
        10, temperature.summarize(rescued, last=5)
    )
    last_best = [_t(5, 1.0, 0.70, 0.70), _t(1, 1.0, 0.60, 0.60)]
    assert "no late-expert penalty" in temperature.verdict(10, temperature.summarize(last_best, last=5))


def _swap_rows(rel: dict[int, float], soft=0.8, hard=0.5):
    rows = [
        {"variant": "soft", "i": None, "test_mean": soft, "relative": 1.0},
        {"variant": "hard", "i": None, "test_mean": hard, "relative": hard / soft},
    ]
    return rows + [{"variant": "swap", "i": i, "test_mean": r * soft, "relative": r} for i, r in rel.items()]


def test_swap_verdict():
    c = 10
    paper_like = {i: 0.3 + 0.07 * i for i in range(1, c)}  # the top swap hurts most, the tail barely matters
    s = swap.summarize(_swap_rows(paper_like), c)
    assert s["worst_i"] == 1 and swap.verdict(1, s, c).endswith("as in the paper.")
    costly_tail = {i: 0.3 + 0.05 * i for i in range(1, c)}  # the last swap still costs > 10%
    assert "the tail is not pure noise" in swap.verdict(1, swap.summarize(_swap_rows(costly_tail), c), c)
    reversed_ = {i: 1.0 - 0.07 * i for i in range(1, c)}  # the last ranks hurt most
    assert "unlike the paper" in swap.verdict(1, swap.summarize(_swap_rows(reversed_), c), c)


def _k(subject, treatment, acc):
    return {"subject": subject, "treatment": treatment, "subject_mean": acc}


def test_knowledge_verdict():
    c = 10
    both = [_k(0, "control", 0.8), _k(0, "remove-images", 0.5), _k(0, "remove-knowledge", 0.2)]
    assert knowledge.verdict(1, knowledge.summarize(both, c)).endswith("as in the paper.")
    no_zero_shot = [_k(0, "control", 0.8), _k(0, "remove-images", 0.12), _k(0, "remove-knowledge", 0.05)]
    assert "only half of the paper's finding" in knowledge.verdict(1, knowledge.summarize(no_zero_shot, c))
    knowledge_harmless = [_k(0, "control", 0.8), _k(0, "remove-images", 0.5), _k(0, "remove-knowledge", 0.7)]
    assert "unlike the paper" in knowledge.verdict(1, knowledge.summarize(knowledge_harmless, c))
    neither = [_k(0, "control", 0.8), _k(0, "remove-images", 0.1), _k(0, "remove-knowledge", 0.5)]
    assert "neither part" in knowledge.verdict(1, knowledge.summarize(neither, c))


def _scaling_inputs(soft_acc: float, fitted: float):
    cells = {
        (None, 0, 1): {"test_mean": 0.4},
        (3, 1, 1): {"test_mean": 0.45},
        (3, 10, 1): {"test_mean": soft_acc},
    }
    matches = [
        {"expert_epoch": 3, "k": 10, "hard_ipc_fitted": fitted, "hard_ipc_observed": 2},
        {"expert_epoch": 3, "k": 1, "hard_ipc_fitted": 1.2, "hard_ipc_observed": None},
    ]
    frontier = [{"ipc": 1, "best_epoch": 3}, {"ipc": 2, "best_epoch": 5}]
    return cells, matches, [3], [0, 1, 10], 10, 1, [1, 2, 5], frontier, True


def test_scaling_verdict():
    holds = scaling.verdict(*_scaling_inputs(0.55, 3.0))
    assert holds.startswith("Holds here") and "~3.0 IPC (3.0x the images)" in holds and "rises" in holds
    assert "does not decrease" in holds
    assert "never reaches it" in scaling.verdict(*_scaling_inputs(0.55, math.inf))
    fails = scaling.verdict(*_scaling_inputs(0.35, 0.5))
    assert fails.startswith("Does not hold here")
    args = list(_scaling_inputs(0.55, 3.0))
    args[3] = [1, 10]
    assert "not assessed" in scaling.verdict(*args)


def _ens_rows(delta: float, std: float):
    return [
        {"ipc": 1, "labels": "single", "expert_epoch": 2, "test_mean": 0.5, "test_std": std, "delta": 0.0},
        {
            "ipc": 1,
            "labels": "ensemble",
            "expert_epoch": 2,
            "test_mean": 0.5 + delta,
            "test_std": std,
            "delta": delta,
        },
    ]


def test_ensemble_verdict():
    assert ensemble.verdict(_ens_rows(0.05, 0.01), [], {1: 2}, 3).startswith("Holds here")
    assert ensemble.verdict(_ens_rows(0.005, 0.01), [], {1: 2}, 3).startswith("Holds only within seed noise")
    assert ensemble.verdict(_ens_rows(-0.05, 0.01), [], {1: 2}, 3).startswith("Does not hold here")
    assert ensemble.verdict(_ens_rows(-0.005, 0.01), [], {1: 2}, 3).startswith("Not seen here")
    assert ensemble.verdict(_ens_rows(0.05, 0.01), [], {1: 2}, 1).startswith("Not assessed")


def _sel_rows(easy: float, hard: float):
    return [{"ipc": 1, "bin": 0, "rel_change": easy}, {"ipc": 1, "bin": 9, "rel_change": hard}]


def test_selection_verdict():
    assert selection_study.verdict(_sel_rows(0.05, -0.1), [1], [0, 9], 10).startswith("Holds here")
    assert selection_study.verdict(_sel_rows(-0.01, -0.1), [1], [0, 9], 10).startswith("Partly holds (hard")
    assert selection_study.verdict(_sel_rows(0.05, 0.02), [1], [0, 9], 10).startswith("Partly holds (easy")
    assert selection_study.verdict(_sel_rows(-0.05, 0.02), [1], [0, 9], 10).startswith("Does not hold here")
    assert selection_study.verdict(_sel_rows(0.05, -0.1), [1], [0], 10).startswith("Not assessed")


def test_labels_verdict():
    rows = [
        {"epoch": 1, "mean_entropy": 1.5, "expert_test_acc": 0.6},
        {"epoch": 5, "mean_entropy": 0.5, "expert_test_acc": 0.8},
    ]
    pairs = [{"a": "shirt", "b": "t-shirt", "mean_prob": 0.2}]
    structured = labels_study.verdict(rows, pairs, 4.0, 5)
    assert "structured (holds here)" in structured and "falling at every epoch" in structured
    assert "weakly structured (does not clearly hold)" in labels_study.verdict(rows, pairs, 1.2, 5)
    assert "not assessed" in labels_study.verdict(rows, [], math.nan, 5)


def test_bytes_verdict():
    def answer(ipc, codec, mean):
        return {"ipc": ipc, "label_codec": codec, "mean": mean}

    summary = {
        "budgets": [
            {
                "budget": "8KB",
                "best_soft": answer(1, "fp16", 0.55),
                "best_hard": answer(1, "hard", 0.45),
                "soft_minus_hard_points": 10.0,
            },
            {
                "budget": "512KB",
                "best_soft": answer(10, "fp16", 0.70),
                "best_hard": answer(50, "hard", 0.75),
                "soft_minus_hard_points": -5.0,
            },
            {"budget": "1KB", "best_soft": None, "best_hard": None, "soft_minus_hard_points": None},
        ],
        "frontier_soft_points": 2,
        "frontier_hard_points": 1,
    }
    rows = [{"on_frontier": True, "label_codec": "hard", "bytes_total": 400_000}]

    class Plan:
        image_codec_bytes: dict = {}
        image_codecs = ("raw",)

    text = bytes_study.verdict(rows, summary, Plan())
    assert text.startswith(
        "At 8KB the best soft set (IPC 1, fp16, 55.0%) beats the best hard set (IPC 1, 45.0%)"
    )
    assert "trails the best hard set (IPC 50, 75.0%) by 5.0 points" in text and "nothing fits in 1KB" in text
    assert "2 of 3 Pareto-frontier points use soft labels" in text and "from 400 KB" in text
