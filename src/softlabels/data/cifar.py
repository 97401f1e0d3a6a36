"""CIFAR-10 / CIFAR-100 from the official python-pickle or binary folders.

Pickles are read with a restricted unpickler that can only rebuild numpy arrays: nothing else from a user
file is ever imported or called.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..validation import CorruptFileError, DataNotFoundError, check_choice
from .base import ImageDataset, register_dataset
from .fashion_mnist import default_search_dirs

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
_PIXELS = 3 * 32 * 32
_HOW_TO_GET = ("download and extract the python or binary archive from "
               "https://www.cs.toronto.edu/~kriz/cifar.html into $SOFTLABELS_DATA/{name}/ or pass root= "
               "(the extracted folder or its parent)")

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_FINE = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl",
    "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair",
    "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin",
    "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp",
    "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck",
    "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television",
    "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf",
    "woman", "worm",
)
CIFAR100_COARSE = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
)

# (module, name) pairs a CIFAR pickle may reference: array/dtype/scalar reconstruction only.
_SAFE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # pickle protocol 5
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
})


class _ArrayUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, *, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise CorruptFileError(f"{self.source}: refusing to unpickle {module}.{name}; CIFAR files only "
                                   "contain numpy arrays, lists and strings. Is this the official file?")
        return super().find_class(module, name)


def safe_unpickle(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` allowing only numpy array reconstruction (raises ``CorruptFileError`` otherwise)."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            return _ArrayUnpickler(f, source=str(path)).load()
        except CorruptFileError:
            raise
        except Exception as e:  # UnpicklingError, EOFError, ValueError, ... from a truncated/garbled file
            raise CorruptFileError(f"{path} is not a readable CIFAR pickle ({type(e).__name__}: {e}); "
                                   "it may be truncated. Re-extract the archive") from None


def _get(d: Any, key: str, path: Path) -> Any:
    if not isinstance(d, dict):
        raise CorruptFileError(f"{path}: expected a dict, got {type(d).__name__}")
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    keys = ", ".join(sorted(k.decode() if isinstance(k, bytes) else str(k) for k in d))
    raise CorruptFileError(f"{path}: missing key {key!r} (has: {keys})")


def _as_images(data: Any, path: Path) -> np.ndarray:
    ok = isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape[1:] == (_PIXELS,)
    if not ok:
        desc = f"{data.dtype} array {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CorruptFileError(f"{path}: 'data' must be an N x {_PIXELS} uint8 array, got {desc}")
    return data.reshape(-1, 3, 32, 32)


def _as_labels(labels: Any, n: int, k: int, path: Path, key: str) -> np.ndarray:
    try:
        y = np.asarray(labels)
    except (ValueError, TypeError):  # ragged or mixed content
        y = np.asarray([], dtype=object)
    if y.ndim != 1 or y.shape[0] != n or not np.issubdtype(y.dtype, np.integer):
        raise CorruptFileError(f"{path}: {key!r} must be {n} integer labels, got {y.dtype} shape {y.shape}")
    if n and (int(y.min()) < 0 or int(y.max()) >= k):
        raise CorruptFileError(f"{path}: {key!r} has labels in [{int(y.min())}, {int(y.max())}], "
                               f"expected [0, {k})")
    return y.astype(np.int64)


def _names(meta: Any, key: str, k: int, path: Path) -> tuple[str, ...]:
    raw = _get(meta, key, path)
    names = tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in raw)
    if len(names) != k:
        raise CorruptFileError(f"{path}: {key!r} has {len(names)} names, expected {k}")
    return names


def _read_binary(path: Path, *, label_bytes: int, label_index: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    rec = label_bytes + _PIXELS
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % rec:
        raise CorruptFileError(f"{path}: {raw.size} bytes is not a whole number of {rec}-byte records; "
                               "the file is truncated or not a CIFAR binary file")
    recs = raw.reshape(-1, rec)
    y = recs[:, label_index].astype(np.int64)
    if int(y.max()) >= k:
        raise CorruptFileError(f"{path}: contains label {int(y.max())}, expected < {k}")
    return recs[:, label_bytes:].reshape(-1, 3, 32, 32), y


def _text_names(path: Path, k: int, default: tuple[str, ...]) -> tuple[str, ...]:
    if not path.is_file():
        return default
    names = tuple(line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
                  if line.strip())
    if len(names) != k:
        raise CorruptFileError(f"{path}: has {len(names)} class names, expected {k}")
    return names


_LAYOUTS = {  # dataset -> [(folder name, format, files that identify it)]
    "cifar10": [("cifar-10-batches-py", "py", ("data_batch_1", "test_batch")),
                ("cifar-10-batches-bin", "bin", ("data_batch_1.bin", "test_batch.bin"))],
    "cifar100": [("cifar-100-python", "py", ("train", "test")),
                 ("cifar-100-binary", "bin", ("train.bin", "test.bin"))],
}


def _locate(name: str, root: str | os.PathLike | None) -> tuple[Path, str]:
    bases = [Path(root).expanduser()] if root is not None else default_search_dirs(name)
    searched: list[Path] = []
    for base in bases:
        for folder in [base] + [base / sub for sub, _, _ in _LAYOUTS[name]]:
            if folder in searched:
                continue
            searched.append(folder)
            for _, fmt, marks in _LAYOUTS[name]:
                if all((folder / m).is_file() for m in marks):
                    return folder, fmt
    expected = " or ".join(f"{sub}/ ({', '.join(marks)}, ...)" for sub, _, marks in _LAYOUTS[name])
    looked = "\n".join(f"  {p}" for p in searched)
    raise DataNotFoundError(f"{name} not found. Expected {expected}. Searched:\n{looked}\n"
                            f"To get the data: {_HOW_TO_GET.format(name=name)}")


def _need(folder: Path, fname: str) -> Path:
    p = folder / fname
    if not p.is_file():
        raise DataNotFoundError(f"{p} is missing; the extracted folder {folder} is incomplete. Re-extract it")
    return p


def _dataset(name: str, folder: Path, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray,
             classes: tuple[str, ...]) -> ImageDataset:
    def t(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x))

    return ImageDataset(name, t(xtr), t(ytr), t(xte), t(yte), classes, CIFAR_MEAN, CIFAR_STD,
                        source=str(folder))


@register_dataset("cifar10", help="CIFAR-10, 32x32 colour, 10 classes (python or binary version).")
def load_cifar10(*, root: str | os.PathLike | None = None) -> ImageDataset:
    """CIFAR-10 from ``cifar-10-batches-py`` or ``-bin``; ``root`` is that folder or its parent."""
    folder, fmt = _locate("cifar10", root)
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    if fmt == "bin":
        parts = [_read_binary(_need(folder, f"{f}.bin"), label_bytes=1, label_index=0, k=10)
                 for f in train_files]
        xte, yte = _read_binary(_need(folder, "test_batch.bin"), label_bytes=1, label_index=0, k=10)
        classes = _text_names(folder / "batches.meta.txt", 10, CIFAR10_CLASSES)
    else:
        def batch(fname: str) -> tuple[np.ndarray, np.ndarray]:
            p = _need(folder, fname)
            d = safe_unpickle(p)
            x = _as_images(_get(d, "data", p), p)
            return x, _as_labels(_get(d, "labels", p), x.shape[0], 10, p, "labels")

        parts = [batch(f) for f in train_files]
        xte, yte = batch("test_batch")
        meta = folder / "batches.meta"
        classes = _names(safe_unpickle(meta), "label_names", 10, meta) if meta.is_file() else CIFAR10_CLASSES
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    return _dataset("cifar10", folder, xtr, ytr, xte, yte, classes)


@register_dataset("cifar100", help="CIFAR-100, 32x32 colour, 100 fine classes (label_mode='coarse': 20).")
def load_cifar100(*, root: str | os.PathLike | None = None, label_mode: str = "fine") -> ImageDataset:
    """CIFAR-100 from ``cifar-100-python`` or ``-binary``; ``label_mode`` is ``fine`` or ``coarse``."""
    mode = check_choice("label_mode", label_mode, ("fine", "coarse"))
    k = 100 if mode == "fine" else 20
    folder, fmt = _locate("cifar100", root)
    if fmt == "bin":
        idx = 1 if mode == "fine" else 0
        xtr, ytr = _read_binary(_need(folder, "train.bin"), label_bytes=2, label_index=idx, k=k)
        xte, yte = _read_binary(_need(folder, "test.bin"), label_bytes=2, label_index=idx, k=k)
        default = CIFAR100_FINE if mode == "fine" else CIFAR100_COARSE
        classes = _text_names(folder / f"{mode}_label_names.txt", k, default)
    else:
        key = f"{mode}_labels"

        def split(fname: str) -> tuple[np.ndarray, np.ndarray]:
            p = _need(folder, fname)
            d = safe_unpickle(p)
            x = _as_images(_get(d, "data", p), p)
            return x, _as_labels(_get(d, key, p), x.shape[0], k, p, key)

        (xtr, ytr), (xte, yte) = split("train"), split("test")
        meta = folder / "meta"
        if meta.is_file():
            classes = _names(safe_unpickle(meta), f"{mode}_label_names", k, meta)
        else:
            classes = CIFAR100_FINE if mode == "fine" else CIFAR100_COARSE
    name = "cifar100-coarse" if mode == "coarse" else "cifar100"
    return _dataset(name, folder, xtr, ytr, xte, yte, classes)
