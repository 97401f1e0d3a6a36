"""Datasets: one ``load_dataset(name, *, root=None)`` entry point over a registry of loaders."""

from . import arrays, cifar, digits, fashion_mnist, folder, synthetic  # noqa: F401  (registers)
from .base import DATASETS, ImageDataset, list_datasets, load_dataset, register_dataset, stratified_split

__all__ = [
    "DATASETS",
    "ImageDataset",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "stratified_split",
]
