"""Streaming image folders: file paths and targets in memory, pixels decoded when they are read.

A 1.2M-image folder does not fit in memory, and most of the library never needs it there: a random set of
IPC images per class reads only targets to choose and then decodes those images; evaluation reads the test
images in chunks; an expert reads batches. :class:`LazyImages` is the uint8 image store of a
:class:`StreamingImageDataset` (indexing decodes exactly the images asked for, and counts them);
:class:`StreamingPrepared` is its :class:`~softlabels.data.prepared.PreparedData`, whose model-ready splits
are :class:`LazyInput` views: reading a chunk of up to ``LazyInput.CHUNK`` images gives a tensor, a larger
selection stays a view (every consumer reads those in chunks: ``predict``, ``logits_of``, stem statistics).

Decoding is the in-memory loader's own (same files -> the same pixels, so the same sets, experts and
students), on a thread pool per read. :func:`expert_loader` is the expert-side stream: a ``DataLoader`` whose
worker processes decode and augment (RandomResizedCrop + flip at a resolution, as the paper's ImageNet
experts), each image's crop drawn from a generator seeded by (seed, draw), so the batches do not depend on
the number of workers. The dataset's fingerprint is its listing (relative paths, file sizes, targets and
decode options), not its pixels: hashing the pixels of a 1.2M-image folder would mean decoding it.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import DataSpec
from ..validation import check_positive_int, check_targets
from .base import ImageDataset, load_dataset
from .prepared import PreparedData, prepare_data

__all__ = ["LazyImages", "LazyInput", "StreamingImageDataset", "StreamingPrepared", "expert_loader",
           "prepare", "random_resized_crop_box"]

Decoder = Callable[[list[Path]], torch.Tensor]  # paths -> uint8 (N, C, H, W)


def _rows(index, n: int) -> torch.Tensor:
    """The int64 row numbers that ``index`` (int, slice, sequence, index or bool tensor) selects of ``n``."""
    if isinstance(index, torch.Tensor):
        index = index.cpu()
        if index.dtype == torch.bool:
            return torch.nonzero(index, as_tuple=False).flatten()
        return torch.arange(n)[index.long()]
    return torch.arange(n)[index]


class LazyImages:
    """uint8 images (N, C, H, W) stored as files: indexing decodes exactly the selected ones, in order.

    ``decoded`` counts the images this object has decoded (the memory a caller used is bounded by what it
    asked for); ``take(rows)`` is a narrower store that decodes nothing until read."""

    dtype = torch.uint8
    ndim = 4

    def __init__(self, paths: Sequence[str], decode: Decoder, image_shape: tuple[int, int, int]) -> None:
        self.paths = tuple(str(p) for p in paths)
        self.decode = decode
        self.image_shape = tuple(int(s) for s in image_shape)
        self.decoded = 0

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.paths), *self.image_shape))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index) -> torch.Tensor:
        rows = _rows(index, len(self))
        return self.read(rows.reshape(1))[0] if rows.ndim == 0 else self.read(rows)

    def read(self, rows: torch.Tensor) -> torch.Tensor:
        paths = [Path(self.paths[i]) for i in rows.tolist()]
        x = self.decode(paths) if paths else torch.empty((0, *self.image_shape), dtype=torch.uint8)
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"{paths[0]} decodes to {tuple(x.shape[1:])} but this folder's images are "
                             f"{self.image_shape}; pass resolution= to resize every image")
        self.decoded += len(paths)
        return x

    def take(self, rows: torch.Tensor) -> LazyImages:
        return LazyImages([self.paths[i] for i in rows.tolist()], self.decode, self.image_shape)

    def __repr__(self) -> str:
        return f"LazyImages({len(self)} x {self.image_shape}, decoded={self.decoded})"


@dataclass(frozen=True, eq=False)
class StreamingImageDataset(ImageDataset):
    """An :class:`ImageDataset` whose ``train_images`` / ``test_images`` are :class:`LazyImages` (targets,
    classes and normalisation constants as usual). Built by ``load_dataset("imagefolder", stream=True)``
    or ``load_dataset("tiny-imagenet", stream=True)``; :func:`prepare` splits it."""

    options: dict = field(default_factory=dict)  # decode options (resolution, grayscale), fingerprinted

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            imgs = getattr(self, f"{split}_images")
            if not isinstance(imgs, LazyImages):
                raise TypeError(f"{self.name} {split} images must be LazyImages, got {type(imgs).__name__}")
            check_targets(getattr(self, f"{split}_targets"), num_classes=len(self.classes), n=len(imgs),
                          name=f"{self.name} {split} targets")
        if self.train_images.image_shape != self.test_images.image_shape:
            raise ValueError(f"{self.name}: train images {self.train_images.image_shape} and test images "
                             f"{self.test_images.image_shape} differ in shape; pass resolution= to resize "
                             "both")
        c = self.train_images.image_shape[0]
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"{self.name}: mean/std need {c} entries, got {len(self.mean)}/{len(self.std)}")

    def fingerprint(self) -> str:
        """Hash of the listing: relative paths and sizes of every file, targets, classes, decode options."""
        if not self._fingerprint:
            h = hashlib.sha256(repr((self.name, self.classes, sorted(self.options.items()))).encode())
            base = Path(self.source) if self.source else None
            for split in ("train", "test"):
                imgs, targets = getattr(self, f"{split}_images"), getattr(self, f"{split}_targets")
                h.update(split.encode() + targets.numpy().tobytes())
                for p in imgs.paths:
                    rel = os.path.relpath(p, base) if base is not None else p
                    h.update(f"{rel}\0{os.path.getsize(p)}\n".encode())
            self._fingerprint.append(h.hexdigest())
        return self._fingerprint[0]

    def subset(self, n_train: int | None = None, n_test: int | None = None, *,
               seed: int = 0) -> StreamingImageDataset:
        """A stratified random subset (nothing is decoded)."""
        def pick(t: torch.Tensor, n: int | None) -> torch.Tensor:
            if n is None or n >= t.shape[0]:
                return torch.arange(t.shape[0])
            return torch.randperm(t.shape[0], generator=torch.Generator().manual_seed(seed))[:n].sort().values

        tr, te = pick(self.train_targets, n_train), pick(self.test_targets, n_test)
        return StreamingImageDataset(self.name, self.train_images.take(tr), self.train_targets[tr],
                                     self.test_images.take(te), self.test_targets[te], self.classes,
                                     self.mean, self.std, self.source, options=self.options)


def _to_input(dataset: ImageDataset, images_u8: torch.Tensor, device) -> torch.Tensor:
    return dataset.normalize(images_u8.to(device))


class LazyInput:
    """Model-ready images of a streaming split: ``rows`` of a :class:`LazyImages`, normalised on ``device``
    when read. Indexing that selects at most ``CHUNK`` images returns a tensor; a larger selection returns
    a narrower view, which the library's consumers read chunk by chunk (so no read holds a whole split)."""

    CHUNK = 4096
    dtype = torch.float32
    ndim = 4

    def __init__(self, images: LazyImages, rows: torch.Tensor, convert: Callable, device) -> None:
        self.images, self.rows, self.convert = images, rows.cpu().long(), convert
        self.device = torch.device(device)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.rows.numel(), *self.images.image_shape))

    def __len__(self) -> int:
        return self.rows.numel()

    def __getitem__(self, index):
        sub = self.rows[_rows(index, len(self))]
        if sub.ndim == 0:
            return self._read(sub.reshape(1))[0]
        return self._read(sub) if sub.numel() <= self.CHUNK else LazyInput(self.images, sub, self.convert,
                                                                            self.device)

    def _read(self, rows: torch.Tensor) -> torch.Tensor:
        return self.convert(self.images.read(rows), self.device)

    def to(self, device, *args, **kwargs) -> LazyInput:
        return LazyInput(self.images, self.rows, self.convert, device)

    def cpu(self) -> LazyInput:
        return self.to("cpu")

    def is_inference(self) -> bool:  # never changed in place: statistics computed from it stay valid
        return True

    def materialize(self) -> torch.Tensor:
        """All of it as one tensor (the caller asks for the memory)."""
        return self._read(self.rows)

    def __repr__(self) -> str:
        return f"LazyInput({tuple(self.shape)}, device={self.device})"


@dataclass(eq=False)
class StreamingPrepared(PreparedData):
    """:class:`PreparedData` of a :class:`StreamingImageDataset`: the same split, with :class:`LazyInput`
    splits (``tensors``) in place of decoded ones."""

    def tensors(self, part: str, *, device: torch.device | str = "cpu") -> tuple[LazyInput, torch.Tensor]:
        key = (part, str(device))
        if key not in self._cache:
            d = self.dataset
            if part in ("train", "val"):
                rows = self.train_idx if part == "train" else self.val_idx
                images, y = d.train_images, d.train_targets[rows]
            elif part == "test":
                images, y = d.test_images, d.test_targets
                rows = torch.arange(len(images))
            else:
                raise ValueError(f"part must be 'train', 'val' or 'test', got {part!r}")
            self._cache[key] = (LazyInput(images, rows, partial(_to_input, d), device), y.to(device))
        return self._cache[key]


def prepare(spec: DataSpec, *, root=None, dataset: ImageDataset | None = None,
            **load_options) -> PreparedData:
    """``prepare_data`` for any dataset: a streaming one gets a :class:`StreamingPrepared` (the same split,
    which reads only targets); others go through ``prepare_data`` unchanged."""
    ds = dataset if dataset is not None else load_dataset(spec.name, root=root, **load_options)
    if not isinstance(ds, StreamingImageDataset):
        return prepare_data(spec, dataset=ds)
    if spec.zca:
        raise ValueError("ZCA whitening is fitted on every training image in memory; a streaming folder "
                         "cannot be whitened: use DataSpec(zca=False)")
    p = prepare_data(spec, dataset=ds)
    return StreamingPrepared(p.dataset, p.spec, p.train_idx, p.val_idx)


# ---- the expert-side stream ---------------------------------------------------------------------------
def random_resized_crop_box(rng: np.random.Generator, w: int, h: int, *, scale=(0.08, 1.0),
                            ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(left, top, width, height) of a RandomResizedCrop, by torchvision's rule: ten tries at a random
    area fraction in ``scale`` and log-uniform aspect ratio in ``ratio``, else the centre crop clamped to
    ``ratio``."""
    area, logr = w * h, (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*logr))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1)), cw, ch
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, round(w / min(ratio))
    elif in_ratio > max(ratio):
        cw, ch = round(h * max(ratio)), h
    else:
        cw, ch = w, h
    return (w - cw) // 2, (h - ch) // 2, cw, ch


class _Crops(Dataset):
    """Pool images decoded and augmented where they are read (a DataLoader worker): item ``(row, draw)`` is
    image ``row`` cropped and flipped by a generator seeded with ``(seed, draw)``."""

    def __init__(self, paths: Sequence[str], targets: torch.Tensor, *, resolution: int, grayscale: bool,
                 seed: int, scale: tuple[float, float], flip: bool) -> None:
        self.paths, self.targets = tuple(paths), targets
        self.resolution, self.mode, self.seed = resolution, "L" if grayscale else "RGB", seed
        self.scale, self.flip = scale, flip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        row, draw = key
        rng = np.random.default_rng((self.seed, draw))
        with Image.open(self.paths[row]) as img:
            img = img.convert(self.mode)
            left, top, cw, ch = random_resized_crop_box(rng, *img.size, scale=self.scale)
            r = self.resolution
            img = img.resize((r, r), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch))
            if self.flip and rng.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            arr = np.asarray(img, dtype=np.uint8)
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        return torch.from_numpy(arr.copy()).permute(2, 0, 1), self.targets[row]


class _Passes(Sampler):
    """Batches of ``(row, draw)``: passes over ``n`` rows, each in the order of a permutation seeded by
    (seed, pass), for ``steps`` batches from step ``start`` (a resumed run continues the same sequence)."""

    def __init__(self, n: int, *, batch_size: int, seed: int, steps: int, start: int = 0) -> None:
        self.n, self.bs, self.seed, self.steps, self.start = n, batch_size, seed, steps, start

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        per_pass = math.ceil(self.n / self.bs)
        order, current = None, -1
        for step in range(self.start, self.steps):
            p, i = divmod(step, per_pass)
            if p != current:
                g = torch.Generator().manual_seed(self.seed * 100_003 + p)
                order = torch.randperm(self.n, generator=g)
                current = p
            rows = order[i * self.bs:(i + 1) * self.bs].tolist()
            yield [(r, p * self.n + r) for r in rows]


def expert_loader(prepared: PreparedData, *, batch_size: int, steps: int, seed: int = 0,
                  resolution: int | None = None, workers: int = 4, start: int = 0,
                  scale: tuple[float, float] = (0.08, 1.0), flip: bool = True) -> DataLoader:
    """Training batches of ``prepared``'s pool for an expert: ``(uint8 (B, C, R, R), targets)``, decoded
    and augmented (RandomResizedCrop at ``resolution`` (default: the dataset's), area ``scale``, then a
    horizontal flip) in ``workers`` processes; ``steps`` batches from step ``start``. Normalise them on the
    device with ``prepared.to_input``. The same arguments give the same batches for any ``workers``."""
    ds = prepared.dataset
    if not isinstance(ds.train_images, LazyImages):
        raise TypeError("expert_loader streams a folder: load it with stream=True (its images are in memory "
                        "here; index prepared.tensors('train') instead)")
    res = check_positive_int("resolution", resolution) if resolution is not None else ds.image_shape[1]
    check_positive_int("batch_size", batch_size)
    check_positive_int("workers", workers, minimum=0)
    rows = prepared.train_idx
    crops = _Crops([ds.train_images.paths[i] for i in rows.tolist()], ds.train_targets[rows], resolution=res,
                   grayscale=ds.image_shape[0] == 1, seed=seed, scale=scale, flip=flip)
    sampler = _Passes(len(crops), batch_size=batch_size, seed=seed, steps=steps, start=start)
    return DataLoader(crops, batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=torch.cuda.is_available(), prefetch_factor=4 if workers else None)
