"""Robust fairness: ABSLD temperatures (:mod:`.absld`), per-class robust accuracy (:mod:`.robust`)."""

from .absld import (
    AbsldConfig,
    AbsldResult,
    class_losses,
    class_tempered,
    train_absld_student,
    update_temperatures,
)
from .robust import (
    AttackSpec,
    MissingExtraError,
    fairness_of,
    pgd_perturb,
    pixel_bounds,
    require_art,
    robust_evaluation,
    stratified_subset,
)

__all__ = ["AbsldConfig", "AbsldResult", "AttackSpec", "MissingExtraError", "class_losses", "class_tempered",
           "fairness_of", "pgd_perturb", "pixel_bounds", "require_art", "robust_evaluation",
           "stratified_subset", "train_absld_student", "update_temperatures"]
