"""``softlabels diagnose SET`` as one call: which soft labels of a set (and of the pool it was drawn from) to
distrust, by cleanlab's label-issue scores and our own diagnostics, in one report.

The pool view reads the set's expert at the set's label epoch and temperature over every training-pool
image (the stored pool logits of :mod:`softlabels.sets.score_store`, computed once per expert), and places
each set image in it: its pool quality percentile and whether cleanlab flags it there too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .io import write_json
from .lab import Lab
from .labels.diagnostics import label_report
from .sets.compressed import CompressedSet
from .validation import DataNotFoundError

__all__ = ["Diagnosis", "diagnose_set"]


@dataclass(frozen=True, kw_only=True)
class Diagnosis:
    """The set's report (:func:`softlabels.labels.diagnostics.label_report`), the pool's (or None) and, per
    set image, where it stands in the pool."""

    source: str
    set_report: dict[str, Any]
    pool_report: dict[str, Any] | None = None
    set_in_pool: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "set": self.set_report, "pool": self.pool_report,
                "set_in_pool": self.set_in_pool}

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())


def diagnose_set(lab: Lab, cset: CompressedSet | str | Path, *, pool: bool = False, cleanlab: bool = True,
                 top: int = 10) -> Diagnosis:
    """Label diagnostics of ``cset`` (a set or a path) and, with ``pool``, of the pool its expert labels.

    The pool needs the set's expert in ``lab``'s output folder (``experts/<key>``) and soft labels from an
    expert epoch recorded in the set's manifest.
    """
    source = str(cset) if isinstance(cset, (str, Path)) else "given set"
    if isinstance(cset, (str, Path)):
        cset = CompressedSet.from_file(cset, num_classes=lab.prepared.num_classes)
    lab.check_compatible(cset, name=source)
    report = label_report(cset.labels, cset.targets, num_classes=cset.num_classes, cleanlab=cleanlab, top=top)
    if not pool:
        return Diagnosis(source=source, set_report=report)
    probs, targets = _pool_labels(lab, cset)
    pool_rep = label_report(probs, targets, num_classes=cset.num_classes, cleanlab=cleanlab,
                            per_sample=False, top=top)
    return Diagnosis(source=source, set_report=report, pool_report=pool_rep,
                     set_in_pool=_placement(lab, cset, probs, targets, cleanlab))


def _pool_labels(lab: Lab, cset: CompressedSet) -> tuple[torch.Tensor, torch.Tensor]:
    from .experts import Trajectory
    from .labels.generate import soft_labels
    from .sets.score_store import pool_logits

    man = cset.manifest
    label = man.get("label") or {}
    if not man.get("experts") or label.get("kind") != "soft" or label.get("expert_epoch") is None:
        raise ValueError("the pool view needs a set labelled by an expert (its manifest names none); "
                         "drop --pool")
    path = lab.out_dir / "experts" / man["experts"][0]
    if not (path / "manifest.json").exists():
        raise DataNotFoundError(f"the set's expert {man['experts'][0]} is not in {lab.out_dir / 'experts'}; "
                                "pass the --out the set was made in")
    expert = Trajectory.open(path)
    logits = pool_logits(lab.prepared, expert, int(label["expert_epoch"]), device=lab.device,
                         cache=lab.logits)
    return soft_labels(logits, temperature=float(label.get("temperature", 1.0))), lab.prepared.train_targets


def _placement(lab: Lab, cset: CompressedSet, probs: torch.Tensor, targets: torch.Tensor,
               cleanlab: bool) -> list[dict[str, Any]]:
    """Per set image drawn from the pool: its pool position, its p_y there and that value's percentile
    within its class (0 = the class's least trusted label), and cleanlab's flag in the pool."""
    from .labels.diagnostics import label_issues, true_class_prob

    prep = lab.prepared
    where = {int(s): i for i, s in enumerate(prep.train_idx.tolist())}
    src = cset.manifest.get("source_indices") or []
    pos = [where.get(int(s)) for s in src]
    if not src or any(p is None for p in pos) or len(pos) != len(cset):
        return []  # not drawn from this pool (a user's set)
    q = true_class_prob(probs, targets)
    flagged = label_issues(probs, targets).is_issue if cleanlab else None
    out = []
    for i, p in enumerate(pos):
        same = q[targets == targets[p]]
        row = {"index": i, "pool_position": p, "p_true": float(q[p]),
               "class_percentile": float((same < q[p]).double().mean())}
        if flagged is not None:
            row["pool_issue"] = bool(flagged[p])
        out.append(row)
    return out
