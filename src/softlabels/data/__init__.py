"""Datasets: one ``load_dataset(name, *, root=None)`` entry point over a registry of loaders."""

from .base import DATASETS, ImageDataset, list_datasets, load_dataset, register_dataset, stratified_split
from . import synthetic  # noqa: F401  (registers)

__all__ = ["DATASETS", "ImageDataset", "list_datasets", "load_dataset", "register_dataset", "stratified_split"]
