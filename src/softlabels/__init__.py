"""softlabels: learning from a few images with soft labels.

The public API; every ``softlabels`` command is one of these calls:

=====================  ===========================================================================
``softlabels run``     ``run_baseline(Lab(out, data=preset.data), preset)``
``expert train``       ``Lab(...).expert(recipe)``
``distill``            ``distill(lab, SetSpec(...), expert=recipe, output=path)``
``evaluate``           ``evaluate_set(lab, path, preset=preset)``
``evaluate --against-baselines``  ``against_baselines(lab, path, preset=preset)``
``diagnose``           ``diagnose_set(lab, path, pool=...)``
``study``              ``run_study(name, lab, scale=..., **options)``
``report``             ``build_report(out)``
``results``            ``ResultsStore(path).query(...)``
``budget``             ``best_within_budget(out, size)`` / ``fill_budget(lab, size)``
``datasets``/...       ``list_datasets()``, ``list_models()``, ``list_presets()``, ``list_studies()``, ...
=====================  ===========================================================================
"""

from .against import BaselineComparison, against_baselines
from .analysis.budget import BudgetAnswer, best_within_budget
from .config import DataSpec, ExpertRecipe, LabelSpec, StudentRecipe
from .data import list_datasets, load_dataset
from .diagnose import Diagnosis, diagnose_set
from .distill import distill
from .engine.losses import list_losses
from .evaluate import SetEvaluation, evaluate_set
from .experts import Trajectory
from .experts_external import UnsafeCheckpointError, load_external_trajectory
from .lab import CellSpec, Lab
from .labels.committees import list_ensemble_modes
from .labels.diagnostics import label_issues, label_report
from .labels.learned import jsd_to_expert_labels, learn_labels
from .labels.learners import list_learners
from .labels.transforms import LABEL_TRANSFORMS
from .main_job import BaselineResult, choose_expert_epochs, run_baseline
from .models import list_models
from .presets import PAPER_PRESET_BY_DATASET, Preset, get_preset, list_presets
from .report.build import build_report
from .sets.codecs import list_codecs
from .sets.compressed import CompressedSet
from .sets.queries import list_queries
from .sets.selection import list_selections
from .sets.spec import SetSpec, list_treatments
from .store import ResultsStore
from .studies import StudyResult, list_studies, run_study
from .studies.bytes_fill import fill_budget
from .version import __version__


def list_transforms() -> dict[str, str]:
    """The registered label transforms (spec names) with their one-line help."""
    return LABEL_TRANSFORMS.describe()


__all__ = [
    "PAPER_PRESET_BY_DATASET",
    "BaselineComparison",
    "BaselineResult",
    "BudgetAnswer",
    "CellSpec",
    "CompressedSet",
    "DataSpec",
    "Diagnosis",
    "ExpertRecipe",
    "LabelSpec",
    "Lab",
    "Preset",
    "ResultsStore",
    "SetEvaluation",
    "SetSpec",
    "StudentRecipe",
    "StudyResult",
    "Trajectory",
    "UnsafeCheckpointError",
    "__version__",
    "against_baselines",
    "best_within_budget",
    "build_report",
    "choose_expert_epochs",
    "diagnose_set",
    "distill",
    "evaluate_set",
    "fill_budget",
    "get_preset",
    "jsd_to_expert_labels",
    "label_issues",
    "label_report",
    "learn_labels",
    "list_codecs",
    "list_datasets",
    "list_ensemble_modes",
    "list_learners",
    "list_losses",
    "list_models",
    "list_presets",
    "list_queries",
    "list_selections",
    "list_studies",
    "list_transforms",
    "list_treatments",
    "load_dataset",
    "load_external_trajectory",
    "run_baseline",
    "run_study",
]
