"""Image folders: the generic ImageNet layout (``imagefolder``) and Tiny ImageNet (``tiny-imagenet``).

Images are decoded with PIL on a thread pool, converted to RGB (or L), resized shorter-side + centre-cropped
to ``resolution`` and stacked into uint8 (N, C, H, W). Class order is the sorted folder names. With
``stream=True`` only the file list and targets are read: images are decoded when they are indexed
(:mod:`softlabels.data.streaming`), by the same decoder, so they are the same pixels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..validation import CorruptFileError, DataNotFoundError, check_positive_int
from .base import ImageDataset, register_dataset
from .fashion_mnist import default_search_dirs
from .streaming import LazyImages, StreamingImageDataset

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp", ".gif")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_GRAY_MEAN = (0.449,)  # channel averages, for grayscale=True
IMAGENET_GRAY_STD = (0.226,)
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"

_FOLDER_LAYOUT = "root/train/<class>/*.jpg|png|... and root/val/<class>/... (or root/test/<class>/...)"
_TINY_LAYOUT = ("tiny-imagenet-200/train/<wnid>/images/*.JPEG and tiny-imagenet-200/val/images/*.JPEG with "
                "val/val_annotations.txt (or val/<wnid>/...), optional words.txt")


# ------------------------------------------------------------------------------------------------ decoding
def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, following links), in sorted order."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(filenames) if _is_image(f)]
    return out


def _decode(path: Path, *, mode: str, resolution: int | None) -> np.ndarray:
    try:
        with Image.open(path) as img:
            if resolution is not None and img.format == "JPEG":
                img.draft(mode, (resolution, resolution))  # DCT downscale; keeps both sides >= resolution
            img = img.convert(mode)
            if resolution is not None and img.size != (resolution, resolution):
                w, h = img.size
                s = min(w, h)  # the centred square, resized in one step (= shorter-side resize + centre crop)
                box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
                img = img.resize((resolution, resolution), Image.Resampling.BILINEAR, box=box)
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CorruptFileError(f"{path}: cannot read image ({type(e).__name__}: {e}); replace or delete "
                               "it") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def load_images(paths: Sequence[Path], *, resolution: int | None, grayscale: bool = False,
                num_workers: int | None = None) -> torch.Tensor:
    """Decode ``paths`` into a uint8 (N, C, H, W) tensor; without ``resolution`` all sizes must agree."""
    mode = "L" if grayscale else "RGB"
    c = 1 if grayscale else 3
    workers = num_workers or min(8, os.cpu_count() or 1)
    if resolution is not None:
        out = np.empty((len(paths), resolution, resolution, c), dtype=np.uint8)

        def fill(i: int) -> None:
            out[i] = _decode(paths[i], mode=mode, resolution=resolution)

        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(fill, range(len(paths))))
    else:
        with ThreadPoolExecutor(workers) as ex:
            arrays = list(ex.map(lambda p: _decode(p, mode=mode, resolution=None), paths))
        sizes = {a.shape[:2] for a in arrays}
        if len(sizes) > 1:
            first = arrays[0].shape[:2]
            odd = next(i for i, a in enumerate(arrays) if a.shape[:2] != first)
            raise ValueError(f"images differ in size ({paths[0]} is {first[1]}x{first[0]}, {paths[odd]} is "
                             f"{arrays[odd].shape[1]}x{arrays[odd].shape[0]}); pass resolution= (e.g. 64) to "
                             "resize them (shorter side + centre crop)")
        out = np.stack(arrays) if arrays else np.empty((0, 1, 1, c), dtype=np.uint8)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


# ------------------------------------------------------------------------------------------------- layouts
def _subdirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _class_tree(split: Path, classes: list[str], *, max_per_class: int | None, layout: str,
                strict: bool) -> tuple[list[Path], list[int]]:
    """Images of ``split/<class>/...``; ``strict`` (train) requires every class folder to hold images."""
    index = {c: i for i, c in enumerate(classes)}
    paths: list[Path] = []
    targets: list[int] = []
    empty: list[str] = []
    for name in _subdirs(split):
        if name not in index:
            raise ValueError(f"{split / name} is a class folder that does not exist in the training folder; "
                             f"the class folders of both splits must match ({layout})")
        files = list_images(split / name)[:max_per_class]
        if not files:
            empty.append(name)
        paths += files
        targets += [index[name]] * len(files)
    if strict and empty:
        raise DataNotFoundError(f"no images in class folder(s) {', '.join(empty[:5])} under {split}; "
                                f"expected {layout} with extensions {', '.join(IMG_EXTENSIONS)}")
    if not paths:
        raise DataNotFoundError(f"no images found under {split}; expected {layout}")
    return paths, targets


def _check_options(resolution: int | None, max_per_class: int | None) -> None:
    if resolution is not None:
        check_positive_int("resolution", resolution)
    if max_per_class is not None:
        check_positive_int("max_per_class", max_per_class)


def _build(name: str, source: Path, train: tuple[list[Path], list[int]], test: tuple[list[Path], list[int]],
           classes: tuple[str, ...], *, resolution: int | None, grayscale: bool,
           num_workers: int | None, stream: bool = False) -> ImageDataset:
    if stream:
        return _build_stream(name, source, train, test, classes, resolution=resolution, grayscale=grayscale,
                             num_workers=num_workers)
    xtr = load_images(train[0], resolution=resolution, grayscale=grayscale, num_workers=num_workers)
    xte = load_images(test[0], resolution=resolution, grayscale=grayscale, num_workers=num_workers)
    if resolution is None and xtr.shape[2:] != xte.shape[2:]:
        raise ValueError(f"{name}: train images are {tuple(xtr.shape[2:])} but validation images "
                         f"{tuple(xte.shape[2:])}; pass resolution= to resize both")
    mean, std = (IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD) if grayscale else (IMAGENET_MEAN, IMAGENET_STD)
    return ImageDataset(name, xtr, torch.tensor(train[1], dtype=torch.int64), xte,
                        torch.tensor(test[1], dtype=torch.int64), classes, mean, std, source=str(source))


def _build_stream(name: str, source: Path, train, test, classes, *, resolution: int | None, grayscale: bool,
                  num_workers: int | None) -> StreamingImageDataset:
    decode = partial(load_images, resolution=resolution, grayscale=grayscale, num_workers=num_workers)
    # without a resolution every image must have the first one's size (checked as each is decoded)
    shape = tuple(decode(train[0][:1]).shape[1:])
    mean, std = (IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD) if grayscale else (IMAGENET_MEAN, IMAGENET_STD)
    return StreamingImageDataset(
        name, LazyImages(train[0], decode, shape), torch.tensor(train[1], dtype=torch.int64),
        LazyImages(test[0], decode, shape), torch.tensor(test[1], dtype=torch.int64), classes, mean, std,
        source=str(source), options={"resolution": resolution, "grayscale": grayscale})


@register_dataset("imagefolder", help="Your own images: root/train/<class>/*.jpg and root/val/<class>/*.jpg.")
def load_imagefolder(*, root: str | os.PathLike | None = None, resolution: int | None = None,
                     grayscale: bool = False, max_per_class: int | None = None,
                     num_workers: int | None = None, stream: bool = False) -> ImageDataset:
    """ImageNet-style folders; ``resolution`` resizes (required when image sizes differ); ``stream``
    decodes images only when they are read."""
    _check_options(resolution, max_per_class)
    if root is None:
        raise DataNotFoundError(f"imagefolder needs root= pointing at a folder laid out as {_FOLDER_LAYOUT}")
    base = Path(root).expanduser()
    if not (base / "train").is_dir():
        raise DataNotFoundError(f"{base / 'train'} does not exist; imagefolder expects {_FOLDER_LAYOUT}")
    test_dir = next((base / s for s in ("val", "test") if (base / s).is_dir()), None)
    if test_dir is None:
        raise DataNotFoundError(f"neither {base / 'val'} nor {base / 'test'} exists; imagefolder expects "
                                f"{_FOLDER_LAYOUT}")
    classes = _subdirs(base / "train")
    if not classes:
        raise DataNotFoundError(f"{base / 'train'} has no class folders; expected {_FOLDER_LAYOUT}")
    train = _class_tree(base / "train", classes, max_per_class=max_per_class, layout=_FOLDER_LAYOUT,
                        strict=True)
    test = _class_tree(test_dir, classes, max_per_class=max_per_class, layout=_FOLDER_LAYOUT, strict=False)
    return _build("imagefolder", base, train, test, tuple(classes), resolution=resolution,
                  grayscale=grayscale, num_workers=num_workers, stream=stream)


def _tiny_root(root: str | os.PathLike | None) -> Path:
    bases = [Path(root).expanduser()] if root is not None else default_search_dirs("tiny-imagenet")
    searched: list[Path] = []
    for b in bases:
        for folder in (b, b / "tiny-imagenet-200"):
            if folder not in searched:
                searched.append(folder)
                if (folder / "train").is_dir() and (folder / "val").is_dir():
                    return folder
    looked = "\n".join(f"  {p}" for p in searched)
    raise DataNotFoundError(f"tiny-imagenet not found. Expected {_TINY_LAYOUT}. Searched:\n{looked}\n"
                            f"To get the data: download and unzip {TINY_IMAGENET_URL} into $SOFTLABELS_DATA/ "
                            "or pass root=")


def _tiny_flat_val(val: Path, classes: list[str], max_per_class: int | None) -> tuple[list[Path], list[int]]:
    ann = val / "val_annotations.txt"
    img_dir = val / "images" if (val / "images").is_dir() else val
    index = {c: i for i, c in enumerate(classes)}
    per_class: dict[int, list[Path]] = {}
    for lineno, line in enumerate(ann.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise CorruptFileError(f"{ann}:{lineno}: expected 'filename<TAB>wnid<TAB>...', got {line!r}")
        fname, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:
            raise CorruptFileError(f"{ann}:{lineno}: class {wnid!r} has no folder in {val.parent / 'train'}")
        path = img_dir / fname
        if not path.is_file():
            raise DataNotFoundError(f"{ann}:{lineno} lists {fname} but {path} does not exist")
        per_class.setdefault(index[wnid], []).append(path)
    paths: list[Path] = []
    targets: list[int] = []
    for c in sorted(per_class):
        files = sorted(per_class[c])[:max_per_class]
        paths += files
        targets += [c] * len(files)
    if not paths:
        raise DataNotFoundError(f"{ann} lists no images; expected {_TINY_LAYOUT}")
    return paths, targets


def _tiny_names(words: Path, wnids: list[str]) -> tuple[str, ...]:
    if not words.is_file():
        return tuple(wnids)
    table: dict[str, str] = {}
    for line in words.read_text(encoding="utf-8", errors="replace").splitlines():
        wnid, _, text = line.partition("\t")
        if text:
            table[wnid.strip()] = text.split(",")[0].strip()
    names = [table.get(w) or w for w in wnids]
    dup = {n for n in names if names.count(n) > 1}  # e.g. two synsets both called "crane"
    return tuple(f"{n} ({w})" if n in dup else n for n, w in zip(names, wnids, strict=True))


@register_dataset("tiny-imagenet", help="Tiny ImageNet (200 classes, 64x64); val split used as test.")
def load_tiny_imagenet(*, root: str | os.PathLike | None = None, resolution: int | None = 64,
                       grayscale: bool = False, max_per_class: int | None = None,
                       num_workers: int | None = None, stream: bool = False) -> ImageDataset:
    """Tiny ImageNet from ``tiny-imagenet-200`` (``root``: it or its parent); val is the test split;
    ``stream`` decodes images only when they are read."""
    _check_options(resolution, max_per_class)
    base = _tiny_root(root)
    classes = _subdirs(base / "train")
    if not classes:
        raise DataNotFoundError(f"{base / 'train'} has no class folders; expected {_TINY_LAYOUT}")
    train = _class_tree(base / "train", classes, max_per_class=max_per_class, layout=_TINY_LAYOUT,
                        strict=True)
    val = base / "val"
    if (val / "val_annotations.txt").is_file():
        test = _tiny_flat_val(val, classes, max_per_class)
    else:
        test = _class_tree(val, classes, max_per_class=max_per_class, layout=_TINY_LAYOUT, strict=False)
    return _build("tiny-imagenet", base, train, test, _tiny_names(base / "words.txt", classes),
                  resolution=resolution, grayscale=grayscale, num_workers=num_workers, stream=stream)
