"""softlabels: learning from a few images with soft labels.

The public API; every ``softlabels`` command is one of these calls:

=====================  ===========================================================================
``softlabels run``     ``run_baseline(Lab(out, data=preset.data), preset)``
``expert train``       ``Lab(...).expert(recipe)``
``distill``            ``distill(lab, SetSpec(...), expert=recipe, output=path)``
``evaluate``           ``evaluate_set(lab, path, preset=preset)``
``study``              ``run_study(name, lab, scale=..., **options)``
``report``             ``build_report(out)``
``results``            ``ResultsStore(path).query(...)``
``budget``             ``best_within_budget(out, size)`` / ``fill_budget(lab, size)``
``datasets``/...       ``list_datasets()``, ``list_models()``, ``list_presets()``, ``list_studies()``, ...
=====================  ===========================================================================
"""

from .analysis.budget import BudgetAnswer, best_within_budget
from .config import DataSpec, ExpertRecipe, LabelSpec, StudentRecipe
from .data import list_datasets, load_dataset
from .distill import distill
from .engine.losses import list_losses
from .evaluate import SetEvaluation, evaluate_set
from .experts import Trajectory
from .lab import CellSpec, Lab
from .labels.transforms import LABEL_TRANSFORMS
from .main_job import BaselineResult, choose_expert_epochs, run_baseline
from .models import list_models
from .presets import Preset, get_preset, list_presets
from .report.build import build_report
from .sets.codecs import list_codecs
from .sets.compressed import CompressedSet
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
    "BaselineResult",
    "BudgetAnswer",
    "CellSpec",
    "CompressedSet",
    "DataSpec",
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
    "__version__",
    "best_within_budget",
    "build_report",
    "choose_expert_epochs",
    "distill",
    "evaluate_set",
    "fill_budget",
    "get_preset",
    "list_codecs",
    "list_datasets",
    "list_losses",
    "list_models",
    "list_presets",
    "list_selections",
    "list_studies",
    "list_transforms",
    "list_treatments",
    "load_dataset",
    "run_baseline",
    "run_study",
]
