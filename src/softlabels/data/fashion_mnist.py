"""Fashion-MNIST and MNIST from IDX files (gzip or raw), parsed with numpy; optional verified download.

Also home of the data-folder search helpers other loaders share (``SOFTLABELS_DATA``, system, user cache).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_write_bytes
from ..validation import CorruptFileError, DataNotFoundError
from .base import ImageDataset, register_dataset

#: Environment variable naming a folder that holds datasets (``$SOFTLABELS_DATA/<dataset>/``).
DATA_ENV = "SOFTLABELS_DATA"
#: Where Debian's ``dataset-*`` packages install data (module attribute so tests can redirect it).
SYSTEM_DATA_DIR = Path("/usr/share/datasets")

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
#: sha256 of the *decompressed* IDX files. Debian re-compresses the archives (its ``.gz`` hashes differ from
#: Zalando's), but the decompressed bytes match Zalando's published raw-file md5s, so we verify the payload.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(d) for d in range(10))

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
_PARTS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
          "t10k-labels-idx1-ubyte")


# ----------------------------------------------------------------------------------------- search helpers
def user_cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/softlabels/<name>`` (default ``~/.cache/softlabels/<name>``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "softlabels" / name


def default_search_dirs(name: str) -> list[Path]:
    """Folders searched when no ``root`` is given, in order.

    ``$SOFTLABELS_DATA/<name>``, ``$SOFTLABELS_DATA``, ``/usr/share/datasets/<name>``, then the user cache.
    """
    dirs: list[Path] = []
    env = os.environ.get(DATA_ENV)
    if env:
        dirs += [Path(env).expanduser() / name, Path(env).expanduser()]
    dirs += [SYSTEM_DATA_DIR / name, user_cache_dir(name)]
    return dirs


def _unique(paths: Sequence[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))


# ----------------------------------------------------------------------------------------------- IDX parsing
def _read_maybe_gzip(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] != b"\x1f\x8b":  # detect by content: some mirrors serve raw bytes under .gz names
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as e:
        raise CorruptFileError(f"{path}: gzip data is truncated or corrupt ({e}); delete the file and "
                               "fetch it again") from None


def parse_idx(data: bytes, *, magic: int, source: str = "IDX data") -> np.ndarray:
    """Parse unsigned-byte IDX bytes; the big-endian magic must be ``magic`` (0x803 images, 0x801 labels)."""
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < 4:
        raise CorruptFileError(f"{source}: only {len(data)} bytes, too short for an IDX header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        kind = "image" if magic == IDX_IMAGES_MAGIC else "label" if magic == IDX_LABELS_MAGIC else "IDX"
        raise CorruptFileError(f"{source}: bad magic number 0x{found:08x}, expected 0x{magic:08x} for an IDX "
                               f"{kind} file; is this the right file?")
    if len(data) < header:
        raise CorruptFileError(f"{source}: header needs {header} bytes but the file has {len(data)}; "
                               "it is truncated")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    payload = len(data) - header
    if payload != expected:
        what = "truncated" if payload < expected else f"{payload - expected} bytes too long"
        raise CorruptFileError(f"{source}: header dims {dims} need {expected} payload bytes but the file has "
                               f"{payload}; it is {what}. Delete it and fetch it again")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: str | os.PathLike, *, magic: int) -> np.ndarray:
    """Read an IDX file (gzip or raw) and check magic, dims and exact payload length."""
    path = Path(path)
    return parse_idx(_read_maybe_gzip(path), magic=magic, source=str(path))


# --------------------------------------------------------------------------------------------- locating
def _candidates(part: str) -> list[str]:
    # MNIST's original archives unzip to e.g. "train-images.idx3-ubyte" on some platforms.
    alt = part.replace("-idx", ".idx")
    return [part, f"{part}.gz", alt, f"{alt}.gz"]


def _find_in(folder: Path) -> tuple[dict[str, Path], list[str]]:
    found: dict[str, Path] = {}
    missing: list[str] = []
    for part in _PARTS:
        hit = next((folder / c for c in _candidates(part) if (folder / c).is_file()), None)
        if hit is None:
            missing.append(part)
        else:
            found[part] = hit
    return found, missing


def _search_folders(name: str, root: str | os.PathLike | None, subdirs: Sequence[str]) -> list[Path]:
    bases = [Path(root).expanduser()] if root is not None else default_search_dirs(name)
    out: list[Path] = []
    for b in bases:
        out.append(b)
        out += [b / s for s in subdirs if b.name != s.split("/")[0]]
    return _unique(out)


def _download_fashion_mnist(dest: Path) -> None:
    import urllib.request

    dest.mkdir(parents=True, exist_ok=True)
    for part, digest in FASHION_MNIST_SHA256.items():
        target = dest / f"{part}.gz"
        if target.is_file():
            continue
        url = FASHION_MNIST_URL + f"{part}.gz"
        try:
            with urllib.request.urlopen(url, timeout=120) as r:
                blob = r.read()
        except OSError as e:
            raise DataNotFoundError(f"downloading {url} failed ({e}); check the network, or install the data "
                                    "with `apt-get install dataset-fashion-mnist`") from None
        try:
            raw = gzip.decompress(blob)
        except (EOFError, OSError, zlib.error) as e:
            raise CorruptFileError(f"{url} did not return valid gzip data ({e}); try again later") from None
        got = hashlib.sha256(raw).hexdigest()
        if got != digest:
            raise CorruptFileError(f"{url}: sha256 of the decompressed file is {got}, expected {digest}; "
                                   "the download is corrupt or the mirror changed. Nothing was saved")
        atomic_write_bytes(target, blob)


def _load_idx_dataset(name: str, *, root: str | os.PathLike | None, subdirs: Sequence[str],
                      classes: tuple[str, ...], mean: tuple[float, ...], std: tuple[float, ...],
                      how_to_get: str, download: bool) -> ImageDataset:
    folders = _search_folders(name, root, subdirs)
    partial: list[str] = []
    hit: tuple[Path, dict[str, Path]] | None = None
    for folder in folders:
        found, missing = _find_in(folder)
        if not missing:
            hit = (folder, found)
            break
        if found:
            partial.append(f"{folder} (has {len(found)} of 4 files; missing {', '.join(missing)})")
    if hit is None and download and name == "fashion-mnist":
        cache = user_cache_dir(name)
        _download_fashion_mnist(cache)
        found, missing = _find_in(cache)
        hit = (cache, found) if not missing else None
    if hit is None:
        looked = "\n".join(f"  {f}" for f in folders)
        extra = ("\nIncomplete folders:\n" + "\n".join(f"  {p}" for p in partial)) if partial else ""
        raise DataNotFoundError(
            f"{name} not found. Expected the four IDX files ({', '.join(_PARTS)}; .gz or raw). "
            f"Searched:\n{looked}{extra}\n"
            f"To get the data: {how_to_get}")
    folder, files = hit
    xtr = read_idx(files[_PARTS[0]], magic=IDX_IMAGES_MAGIC)
    ytr = read_idx(files[_PARTS[1]], magic=IDX_LABELS_MAGIC)
    xte = read_idx(files[_PARTS[2]], magic=IDX_IMAGES_MAGIC)
    yte = read_idx(files[_PARTS[3]], magic=IDX_LABELS_MAGIC)
    for (xp, x), (yp, y) in (((_PARTS[0], xtr), (_PARTS[1], ytr)), ((_PARTS[2], xte), (_PARTS[3], yte))):
        if x.shape[0] != y.shape[0]:
            raise CorruptFileError(f"{files[xp]} has {x.shape[0]} images but {files[yp]} has {y.shape[0]} "
                                   "labels; the files do not belong together")
        if y.size and int(y.max()) >= len(classes):
            raise CorruptFileError(f"{files[yp]} contains label {int(y.max())} but {name} has "
                                   f"{len(classes)} classes")
    if xtr.shape[1:] != xte.shape[1:]:
        raise CorruptFileError(f"{name}: train images are {xtr.shape[1:]} but test images {xte.shape[1:]}")

    def images(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x.copy()).unsqueeze(1)

    def targets(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(y.astype(np.int64))

    return ImageDataset(name, images(xtr), targets(ytr), images(xte), targets(yte), classes, mean, std,
                        source=str(folder))


@register_dataset("fashion-mnist", help="Zalando Fashion-MNIST, 28x28 grey, 10 classes (download=True).")
def load_fashion_mnist(*, root: str | os.PathLike | None = None, download: bool = False) -> ImageDataset:
    """Fashion-MNIST from ``root`` or the default folders; ``download=True`` fetches it to the user cache."""
    how = ("`apt-get install dataset-fashion-mnist`, or put the files in $SOFTLABELS_DATA/fashion-mnist/, "
           "or call softlabels.load_dataset('fashion-mnist', download=True) once to fetch them into "
           f"{user_cache_dir('fashion-mnist')}")
    return _load_idx_dataset("fashion-mnist", root=root, subdirs=("fashion-mnist", "FashionMNIST/raw"),
                             classes=FASHION_MNIST_CLASSES, mean=(0.2860,), std=(0.3530,), how_to_get=how,
                             download=bool(download))


@register_dataset("mnist", help="LeCun MNIST digits, 28x28 grey, 10 classes (IDX files).")
def load_mnist(*, root: str | os.PathLike | None = None) -> ImageDataset:
    """MNIST from ``root`` or the default folders (no download: place the IDX files yourself)."""
    how = ("download the four IDX files (e.g. from https://storage.googleapis.com/cvdf-datasets/mnist/) into "
           "$SOFTLABELS_DATA/mnist/ or pass root=")
    return _load_idx_dataset("mnist", root=root, subdirs=("mnist", "MNIST/raw"), classes=MNIST_CLASSES,
                             mean=(0.1307,), std=(0.3081,), how_to_get=how, download=False)
