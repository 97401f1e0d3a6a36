"""Filling a byte budget (``softlabels budget SIZE --fill``): train the bytes-study cells of about that size.

Candidates are IPC x label codec of the bytes study, so the runs merge with ``softlabels study bytes``.
A label codec's payload size depends on the number of images and classes only, and an image codec's on
the images only, so the sizes are measured on sets labelled at any epoch before the epochs are chosen.
"""

from __future__ import annotations

from typing import Any

from ..analysis.budget import SELECT_ON, BudgetAnswer, best_within_budget
from ..lab import Lab
from ..presets import Preset
from ..sets.spec import SetSpec
from ..units import parse_size
from ..validation import check_choice
from .base import expert_epochs
from .bytes import FULL_IPCS, QUICK_IPCS, STUDY, cell_label, cell_spec, resolve_plan

__all__ = ["FILL_IPCS", "fill_budget"]

#: IPCs tried when filling a budget: the bytes study's grid, extended upwards.
FILL_IPCS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def fill_budget(
    lab: Lab,
    budget_bytes: int | str,
    *,
    scale: str = "quick",
    label_kind: str | None = None,
    codecs: Any = None,
    ipcs: Any = None,
    expert_epoch: int | None = None,
    image_codec: Any = "auto",
    seeds: Any = None,
    preset: Preset | str | None = None,
    lower: float = 0.25,
    select_on: str = "val_acc",
    study: str | None = STUDY,
) -> BudgetAnswer | None:
    """Train the bytes-study cells whose measured size lies in [``lower`` * budget, budget], then answer.

    Per codec the IPC ladder (``FILL_IPCS``, or ``ipcs``) stops at the first set over budget, and the largest
    fitting IPC is kept if none lands in the band. Soft cells use ``expert_epoch``, else the shared
    validation sweep's choice at each chosen IPC. Runs already stored are not repeated. The answer is
    :func:`~softlabels.analysis.budget.best_within_budget` over ``study`` (default "bytes"; None for every
    study) on the lab's dataset and data split.
    """
    budget = parse_size(budget_bytes)
    if not 0 < lower <= 1:
        raise ValueError(f"lower must be in (0, 1], got {lower}")
    check_choice("select_on", select_on, SELECT_ON)
    plan, expert = resolve_plan(
        lab,
        scale=scale,
        preset=preset,
        ipcs=ipcs or FILL_IPCS,
        codecs=codecs,
        expert_epoch=expert_epoch,
        image_codec=image_codec,
        seeds=seeds,
        label_kind=label_kind,
        measure_ipcs=QUICK_IPCS if scale == "quick" else FULL_IPCS,
        choose_epochs=False,
    )
    probe_epoch = expert.epochs_done if expert is not None else None  # any epoch: sizes do not depend on it
    chosen: list[tuple[int, str, str]] = []
    for ic in plan.image_codecs:
        for codec in plan.codecs:
            band, last_fit = [], None
            for ipc in sorted(plan.ipcs):
                spec = SetSpec(ipc=ipc, label=cell_label(codec, probe_epoch), image_codec=ic)
                size = lab.build_set(spec, experts=[expert] if expert else []).nbytes["total"]
                if size > budget:
                    break
                last_fit = ipc
                if size >= lower * budget:
                    band.append(ipc)
            chosen += [(ipc, codec, ic) for ipc in (band or ([last_fit] if last_fit is not None else []))]
    soft_ipcs = sorted({ipc for ipc, codec, _ in chosen if codec != "hard"})
    if expert_epoch is not None:
        epochs = dict.fromkeys(soft_ipcs, expert_epoch)
    elif soft_ipcs:
        epochs = expert_epochs(lab, plan.preset, expert, soft_ipcs)[0]
    else:
        epochs = {}
    specs = [
        cell_spec(
            plan,
            expert,
            ipc=ipc,
            codec=codec,
            expert_epoch=None if codec == "hard" else epochs[ipc],
            image_codec=ic,
        )
        for ipc, codec, ic in chosen
    ]
    lab.evaluate_many(specs)
    return best_within_budget(lab.store, budget, dataset=lab.data.name, study=study, label_kind=label_kind,
                              data=lab.data, select_on=select_on)
