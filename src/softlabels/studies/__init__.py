"""Every study of the paper as a function: ``run_study(name, lab, scale=...)`` or ``softlabels study NAME``.

Study modules in this package register themselves; they are discovered and imported here.
"""

import importlib
import pkgutil

from .base import STUDIES, StudyResult, list_studies, register_study, run_study

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_") and _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["STUDIES", "StudyResult", "list_studies", "register_study", "run_study"]
