"""Ensemble modes of committees (:data:`COMMITTEES`, spec strings in ``LabelSpec.ensemble_mode``); how they
combine experts is :func:`softlabels.labels.generate.committee_labels`. A module of its own so that configs
can check a mode without importing the engine."""

from __future__ import annotations

from ..specs import Param, SpecRegistry

__all__ = ["COMMITTEES", "PRIOR_TEMPERATURE", "list_ensemble_modes"]

COMMITTEES = SpecRegistry("ensemble mode")
_WEIGHTS = Param(key="weights", kind="choice", choices=("equal", "prior"), default="equal")
PRIOR_TEMPERATURE = 5.0  # CV-DD's weight temperature over accuracies in percent


@COMMITTEES.define("logits", help="softmax of the members' mean logits / T (the reference code's ensemble)")
def _logits_mode() -> tuple[str, str]:
    return "logits", "equal"


@COMMITTEES.define("probs", _WEIGHTS, help="MEAL V2: the (weighted) mean of the members' softmax(z / T)")
def _probs_mode(weights: str) -> tuple[str, str]:
    return "probs", weights


@COMMITTEES.define("vote", _WEIGHTS,
                   help="committee vote: the (weighted) share of members whose argmax is each class (CV-DD)")
def _vote_mode(weights: str) -> tuple[str, str]:
    return "vote", weights


def list_ensemble_modes() -> dict[str, str]:
    return COMMITTEES.describe()
