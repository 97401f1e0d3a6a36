"""SetSpec: the value that names a compressed training set and builds it.

A set is (how many images per class, which images, their labels, how they are stored, what is done to it,
where the images come from). Its part of every run key is :meth:`SetSpec.identity`, computed from this value
and the keys of the experts it reads, and from nothing else: two specs that build different sets never share
a key. A user's set file is a source named by its content hash, so a moved or copied file is the same set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..config import LabelSpec
from ..specs import Param, SpecRegistry
from ..validation import check_positive_int
from .compressed import CompressedSet
from .queries import query_budget
from .selection import selection as parse_selection

if TYPE_CHECKING:
    from pathlib import Path

    from ..data.prepared import PreparedData
    from ..experts import Trajectory
    from ..labels.generate import LogitCache

__all__ = ["TREATMENTS", "SetSpec", "list_treatments"]

TREATMENTS = SpecRegistry("set treatment")


@TREATMENTS.define("none", help="the set as built")
def _no_treatment():
    return lambda cset: cset


@TREATMENTS.define(
    "drop-class",
    Param(key="cls", kind="int", check=lambda v: v >= 0, allowed="an integer >= 0"),
    help="drop the images of class cls and their labels (the other labels keep column cls)",
)
def _drop_class(cls: int):
    def apply(cset: CompressedSet) -> CompressedSet:
        if cls >= cset.num_classes:
            raise ValueError(f"drop-class: cls must be in 0..{cset.num_classes - 1}, got {cls}")
        keep = cset.targets != cls
        man = dict(cset.manifest, removed_class=int(cls))
        man["source_indices"] = [s for s, k in zip(man["source_indices"], keep.tolist(), strict=True) if k]
        return CompressedSet(
            cset.images[keep].clone(), cset.labels[keep].clone(), cset.targets[keep].clone(), man
        )

    return apply


def list_treatments() -> dict[str, str]:
    return TREATMENTS.describe()


@dataclass(frozen=True, kw_only=True)
class SetSpec:
    """``ipc`` images per class chosen by ``selection`` (seed ``image_seed``) from ``source``, labelled per
    ``label``, changed by ``treatment`` and stored with ``image_codec`` (and ``label.codec``).

    ``source`` is ``"pool"`` (the lab's training pool) or ``"file:<content hash>"`` (a user's set, given
    to :meth:`build`); ``keep_labels`` keeps a file's own labels (``label`` then says what they are).
    ``queries`` is a label-query budget (:mod:`softlabels.sets.queries`): only that many images get the
    expert's soft label. Selection, treatment, query and codec specs are stored in canonical form.
    """

    ipc: int
    label: LabelSpec = field(default_factory=LabelSpec)
    selection: str = "random"
    image_seed: int = 0
    image_codec: str = "raw"
    treatment: str = "none"
    source: str = "pool"
    keep_labels: bool = False
    queries: str = "all"

    def __post_init__(self) -> None:
        from .codecs import image_codec

        check_positive_int("ipc", self.ipc)
        check_positive_int("image_seed", self.image_seed, minimum=0)
        if not isinstance(self.label, LabelSpec):
            raise TypeError(f"label must be a LabelSpec, got {type(self.label).__name__}")
        object.__setattr__(self, "selection", parse_selection(self.selection)[1])
        object.__setattr__(self, "treatment", TREATMENTS.canonical(self.treatment))
        object.__setattr__(self, "image_codec", image_codec(self.image_codec).spec)
        if self.source != "pool" and not (self.source.startswith("file:") and len(self.source) > 5):
            raise ValueError(f"source must be 'pool' or 'file:<content hash>', got {self.source!r}")
        if self.source != "pool" and self.selection != "all":
            raise ValueError("a set file's images are taken whole: use selection='all' with a file source")
        if self.keep_labels and self.source == "pool":
            raise ValueError("keep_labels applies to a file source only (the pool has no labels of its own)")
        budget, canonical = query_budget(self.queries)
        object.__setattr__(self, "queries", canonical)
        if budget.q is not None:
            if self.label.kind != "soft" or self.source != "pool":
                raise ValueError("a query budget limits expert soft labels of pool images: use a soft "
                                 "LabelSpec on the pool, or queries='all'")
            if budget.proxy is not None and self.label.expert_epoch is not None \
                    and budget.proxy >= self.label.expert_epoch:
                raise ValueError(f"the uncertainty proxy (epoch {budget.proxy}) must be an earlier "
                                 f"checkpoint than the label epoch {self.label.expert_epoch}; lower proxy")

    @classmethod
    def of_set(cls, cset: CompressedSet) -> SetSpec:
        """The spec of a user's (or a saved) set as it is: its content hash, true label kind and codecs."""
        codec = str(cset.manifest.get("label_codec", "fp32"))
        kind = "hard" if codec == "hard" or _one_hot(cset.labels) else "soft"
        return cls(
            ipc=max(1, round(cset.ipc)),
            label=LabelSpec(kind=kind, codec=codec),
            selection="all",
            image_codec=str(cset.manifest.get("image_codec", "raw")),
            source=f"file:{cset.identity_hash()}",
            keep_labels=True,
        )

    # ---- identity ---------------------------------------------------------------------------------------
    def experts_used(self, experts: Sequence[Trajectory]) -> tuple[Trajectory, ...]:
        """The experts the set reads: the label's (ensemble) and the selection's."""
        n_label = self.label.ensemble if self.label.kind == "soft" and not self.keep_labels else 0
        n = max(n_label, parse_selection(self.selection)[0].experts_used)
        if len(experts) < n:
            raise ValueError(f"this set reads {n} expert(s) (label ensemble / selection) but {len(experts)} "
                             "were given; pass experts=[...]")
        return tuple(experts[:n])

    def identity(self, experts: Sequence[Trajectory] = ()) -> dict[str, Any]:
        """The set's part of a run key: flat fields (the store promotes several to columns); treatment,
        source and a selection's expert appear only where they apply."""
        soft = self.label.kind == "soft" and not self.keep_labels
        label_keys = [t.key for t in experts[: self.label.ensemble]] if soft else []
        d: dict[str, Any] = {
            "ipc": self.ipc, "image_seed": self.image_seed, "label": self.label.to_dict(),
            "expert_key": ",".join(label_keys), "expert_epoch": self.label.expert_epoch if soft else None,
            "temperature": self.label.temperature, "codec": self.label.codec, "image_codec": self.image_codec,
            "selection": self.selection,
        }
        sel_n = parse_selection(self.selection)[0].experts_used
        if sel_n:
            d["selection_expert_key"] = ",".join(t.key for t in experts[:sel_n])
        if self.treatment != "none":
            d["treatment"] = self.treatment
        if self.queries != "all":
            d["queries"] = self.queries
        if self.source != "pool":
            d["source"], d["keep_labels"] = self.source, self.keep_labels
        return d

    # ---- building ---------------------------------------------------------------------------------------
    def build(
        self,
        prepared: PreparedData,
        *,
        experts: Sequence[Trajectory] = (),
        device: str | torch.device = "cpu",
        cache: LogitCache | None = None,
        given: CompressedSet | None = None,
        work_dir: str | Path | None = None,
        on_step=None,
    ) -> CompressedSet:
        """The set, encoded with its codecs (its labels are what a student sees, its bytes are measured).

        ``given`` is the user's set for a file source; its content hash must match the source.
        ``work_dir`` keeps resumable state of learned labels; ``on_step`` sees their meta steps.
        """
        from ..labels.generate import label_images
        from ..labels.transforms import parse_transform

        experts = self.experts_used(experts)
        ds = prepared.dataset
        if self.source == "pool":
            if given is not None:
                raise ValueError("given= is for a file source; this spec draws from the pool")
            sel, _ = parse_selection(self.selection)
            positions = sel.select(
                prepared, ipc=self.ipc, seed=self.image_seed, experts=experts, device=device, cache=cache
            )
            origin: dict[str, Any] = {}
            if self.queries == "all":
                info: dict[str, Any] = {}  # a committee's agreement, for the manifest
                labels = label_images(prepared, positions, self.label, experts, device=device, cache=cache,
                                      info=info, seed=self.image_seed, work_dir=work_dir, on_step=on_step)
                origin.update(info)
            else:
                positions, labels, origin["queries"] = self._query(prepared, positions, experts, device,
                                                                   cache)
            source_idx = prepared.train_idx[positions]
            images, targets = ds.train_images[source_idx].clone(), prepared.train_targets[positions].clone()
            origin["source_indices"] = source_idx.tolist()
        else:
            if given is None or given.identity_hash() != self.source[5:]:
                raise ValueError(f"source {self.source} needs given= the set with that content hash")
            images, targets = given.images.clone(), given.targets.clone()
            labels = (
                given.labels.clone() if self.keep_labels else self._relabel(prepared, images, experts, device)
            )
            origin = {"source_indices": list(range(len(given))), "source_manifest": given.manifest}
        fn, transform = parse_transform(self.label.transform)
        labels = fn(labels, targets, generator=torch.Generator().manual_seed(self.image_seed + 99991))
        empty = int((labels.sum(1) == 0).sum())
        if empty:  # e.g. class removal on an image whose whole mass was on the removed class
            import warnings

            warnings.warn(
                f"{empty} of {len(labels)} label rows are all zero after {transform}: students learn "
                "nothing from those images",
                RuntimeWarning,
                stacklevel=2,
            )
        manifest = {
            "dataset": ds.name,
            "dataset_fingerprint": ds.fingerprint(),
            "classes": list(ds.classes),
            "mean": list(ds.mean),
            "std": list(ds.std),
            "zca": bool(prepared.spec.zca),
            "ipc": self.ipc,
            "selection": self.selection,
            "seed": self.image_seed,
            "label": {**self.label.to_dict(), "transform": transform},
            "experts": [t.key for t in experts],
            "treatment": self.treatment,
            "source": self.source,
            **origin,
        }
        cset = TREATMENTS.parse(self.treatment).obj(CompressedSet(images, labels, targets, manifest))
        return cset.encode(image_codec=self.image_codec, label_codec=self.label.codec)

    def _query(self, prepared, positions, experts, device, cache):
        """(positions, labels, record) under the query budget: the expert labels only the chosen images."""
        from ..labels.generate import hard_labels, label_images

        budget, _ = query_budget(self.queries)
        chosen, proxy_queries = budget.choose(prepared, positions, seed=self.image_seed, experts=experts,
                                              device=device, cache=cache)
        labels = hard_labels(prepared.train_targets[positions], num_classes=prepared.num_classes)
        labels[chosen] = label_images(prepared, positions[chosen], self.label, experts, device=device,
                                      cache=cache).to(labels.dtype)
        record = {"spec": self.queries, "expert_queries": int(chosen.numel()), "proxy_queries": proxy_queries,
                  "queried": chosen.tolist(), "rest": budget.rest}
        if budget.rest == "none":
            positions, labels = positions[chosen], labels[chosen]
            record["queried"] = list(range(int(chosen.numel())))
        return positions, labels, record

    def _relabel(self, prepared: PreparedData, images: torch.Tensor, experts, device) -> torch.Tensor:
        from ..labels.generate import COMMITTEES, committee_labels, committee_weights, member_logits

        if self.label.kind == "learned":
            raise ValueError("learned labels are learned for images drawn from the training pool; a file's "
                             "images keep their labels (keep_labels) or are relabelled by an expert")
        if self.label.kind == "hard":
            raise ValueError(
                "hard labels of a file's images are its own targets: use keep_labels with a hard "
                "label spec, or LabelSpec(kind='soft', expert_epoch=E) to relabel"
            )
        if self.label.expert_epoch is None:
            raise ValueError("relabelling needs an expert epoch (LabelSpec(expert_epoch=...))")
        x = prepared.to_input(images, device=device)
        chosen, epoch = experts[: self.label.ensemble], self.label.expert_epoch
        weights = committee_weights(chosen, epoch, COMMITTEES.parse(self.label.ensemble_mode).obj[1])
        return committee_labels([z.cpu() for z in member_logits(chosen, epoch, x, device=device)],
                                mode=self.label.ensemble_mode, temperature=self.label.temperature,
                                weights=weights)


def _one_hot(labels: torch.Tensor) -> bool:
    return bool(((labels == 0) | (labels == 1)).all() and (labels.sum(1) == 1).all())
