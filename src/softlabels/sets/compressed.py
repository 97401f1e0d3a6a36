"""CompressedSet: a few images + their labels + a manifest; saved with safetensors, validated on load.

The byte count of a set is the size of its stored payload (encoded images + encoded labels), measured
from the tensors written, not estimated. True class ids are stored beside it for analysis only (the
student never sees them) and are counted separately as ``aux`` bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..io import load_tensors, save_tensors, tensor_hash
from ..validation import CorruptFileError, DataNotFoundError, check_images, check_labels, check_targets
from ..version import __version__

FORMAT = "softlabels.compressed-set/1"


IMAGE_SPACES = ("pixels", "model")


@dataclass(eq=False)
class CompressedSet:
    """``images`` (N, C, H, W): uint8 pixels, or float32 for synthetic sets; ``labels`` float (N, K) as the
    student will see them (decoded from the label codec); ``targets`` int64 (N,) true classes; ``manifest``
    describes how it was made.

    Float images live in the manifest's ``image_space``: "pixels" (values in [0, 1], normalised like the
    dataset's images before training) or "model" (already the model's input, e.g. a distillation method's
    normalised, possibly ZCA-whitened, images: used as they are).
    """

    images: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor
    manifest: dict = field(default_factory=dict)
    _payload: tuple | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_images(self.images, name="compressed-set images")
        m = self.manifest
        if self.images.dtype.is_floating_point:
            self.images = self.images.float()
            m.setdefault("image_space", "pixels")
            m.setdefault("image_codec", "float:dtype=fp32")
        elif self.images.dtype != torch.uint8:
            raise TypeError(
                f"compressed-set images must be uint8 or float (N, C, H, W), got {self.images.dtype}"
            )
        space = m.setdefault("image_space", "pixels")
        if space not in IMAGE_SPACES:
            raise ValueError(f"manifest image_space must be one of {', '.join(IMAGE_SPACES)}, got {space!r}")
        if space == "model" and not self.images.dtype.is_floating_point:
            raise ValueError("image_space 'model' needs float images (uint8 images are pixels)")
        n = self.images.shape[0]
        check_labels(self.labels, n=n, name="compressed-set labels",
                     atol=_row_sum_tolerance(self.manifest.get("label_codec", "fp32"), self.labels.shape[1]))
        check_targets(self.targets, num_classes=self.labels.shape[1], n=n, name="compressed-set targets")
        m.setdefault("format", FORMAT)
        m.setdefault("num_classes", int(self.labels.shape[1]))
        m.setdefault("image_codec", "raw")
        m.setdefault("label_codec", "fp32")
        if len(m.get("mean", ())) not in (0, self.images.shape[1]):
            raise ValueError(
                f"manifest mean has {len(m['mean'])} entries for {self.images.shape[1]} channels"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.labels.shape[1])

    @property
    def ipc(self) -> float:
        return len(self) / self.num_classes

    @property
    def nbytes(self) -> dict[str, int]:
        """Stored payload bytes: images, labels, their total, and aux (true targets, not for training),
        measured from the encoded payload (computed once, on first use)."""
        return dict(self._encoded()[2])

    def _encoded(self) -> tuple[dict, dict, dict]:
        """(payload tensors, payload metadata, byte counts) for the manifest's codecs (cached)."""
        if self._payload is None:
            self._payload = _encode(self, self.manifest["image_codec"], self.manifest["label_codec"])[0]
        return self._payload

    def model_input(
        self, *, device: str | torch.device = "cpu", zca=None, mean=None, std=None
    ) -> torch.Tensor:
        """Normalised float images on ``device`` with the manifest's mean/std, else ``mean``/``std`` (a user's
        set made elsewhere records none: pass the dataset's), and ZCA if given. Images in the "model" space
        are returned as they are."""
        if self.manifest.get("image_space") == "model":
            return self.images.to(device).float()
        if self.manifest.get("mean") is not None and self.manifest.get("std") is not None:
            mean, std = self.manifest["mean"], self.manifest["std"]
        x = self.images.to(device).float()
        if not self.images.dtype.is_floating_point:
            x = x.div_(255.0)
        if mean is not None and std is not None:
            m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
            s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
            x = (x - m) / s
        return zca.apply(x) if zca is not None else x

    def encode(self, *, image_codec: str | None = None, label_codec: str = "fp32") -> CompressedSet:
        """The set as stored with these codecs (``image_codec`` None: the manifest's): images and labels
        become what decoding gives back, and the manifest records the measured payload bytes."""
        image_codec = image_codec or self.manifest["image_codec"]
        payload, (images, labels), nb = _encode(self, image_codec, label_codec)
        man = dict(self.manifest, image_codec=image_codec, label_codec=label_codec, nbytes=nb)
        return CompressedSet(images, labels, self.targets.clone(), man, payload)

    def content_hash(self) -> str:
        return tensor_hash(self.images, self.labels, self.targets)

    def identity_hash(self) -> str:
        """What a student trained on this set depends on: the content, and how the images become model input
        (their space and a normalisation the manifest records). Equal to :meth:`content_hash` for pixel images
        without a recorded normalisation."""
        m = self.manifest
        extra = {k: m[k] for k in ("mean", "std") if m.get(k) is not None}
        if m.get("image_space", "pixels") != "pixels":
            extra["image_space"] = m["image_space"]
        if not extra:
            return self.content_hash()
        import hashlib

        text = json.dumps({"content": self.content_hash(), **extra}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write one safetensors file (encoded payload + targets) with the manifest in its metadata."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
        tensors, meta, nb = self._encoded()
        tensors, meta = dict(tensors), dict(meta)
        man = dict(self.manifest, nbytes=nb, softlabels_version=__version__, content_hash=self.content_hash())
        tensors["aux.targets"] = self.targets.to(torch.int64)
        meta["manifest"] = json.dumps(man, sort_keys=True, default=str)
        save_tensors(path, tensors, metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> CompressedSet:
        from .codecs import encoded_from_safetensors_dict, image_codec, label_codec

        path = Path(path)
        if not path.exists():
            raise DataNotFoundError(f"compressed set {path} does not exist")
        tensors, meta = load_tensors(path)
        if "manifest" not in meta or "aux.targets" not in tensors:
            raise CorruptFileError(f"{path} is not a softlabels compressed set (no manifest/targets); "
                                   "for images + labels made elsewhere use CompressedSet.from_file")
        try:
            man = json.loads(meta["manifest"])
        except json.JSONDecodeError as e:
            raise CorruptFileError(
                f"{path}: its manifest is not valid JSON ({e}); the file is corrupt"
            ) from None
        try:
            ienc = encoded_from_safetensors_dict(tensors, meta, "images")
            lenc = encoded_from_safetensors_dict(tensors, meta, "labels")
            images = image_codec(man["image_codec"]).decode(ienc)
            labels = label_codec(man["label_codec"]).decode(lenc, images=images)  # a projector reads them
        except (KeyError, ValueError, RuntimeError) as e:
            raise CorruptFileError(f"{path}: cannot decode payload ({e})") from None
        payload_tensors = {k: v for k, v in tensors.items() if not k.startswith("aux.")}
        payload = (payload_tensors, {k: v for k, v in meta.items() if k != "manifest"},
                   _measured(payload_tensors, tensors["aux.targets"]))
        cset = cls(images, labels, tensors["aux.targets"], man, payload)
        if man.get("content_hash") and cset.content_hash() != man["content_hash"]:
            raise CorruptFileError(f"{path}: content hash mismatch; the file is corrupt")
        return cset

    @classmethod
    def from_arrays(cls, images: torch.Tensor, labels: torch.Tensor | None = None, *,
                    targets: torch.Tensor | None = None, num_classes: int | None = None,
                    mean=None, std=None, image_space: str | None = None, quantize: bool = False,
                    **manifest) -> CompressedSet:
        """A set from a user's tensors: ``labels`` (N, K) soft labels and/or ``targets`` (N,) classes.

        uint8 images are pixels. Float images are kept as floats (stored with the ``float`` image codec):
        in [0, 1] they are pixels; ``image_space="model"`` says they are already the model's input (a
        distillation method's normalised images, any range). ``quantize=True`` stores float pixels as uint8.
        """
        check_images(images)
        if image_space is not None and image_space not in IMAGE_SPACES:
            raise ValueError(f"image_space must be one of {', '.join(IMAGE_SPACES)}, got {image_space!r}")
        if images.dtype.is_floating_point:
            lo, hi = float(images.min()), float(images.max())
            if image_space == "model":
                if quantize:
                    raise ValueError(
                        "quantize=True stores pixels as uint8; images in the model space cannot be "
                        "quantised (their range is not [0, 1])"
                    )
                if mean is not None:
                    raise ValueError("images in the model space are already normalised: drop mean= and std=")
                manifest["image_space"] = "model"
            elif lo < 0 or hi > 1:
                raise ValueError(
                    f"float images range over [{lo:.3g}, {hi:.3g}]: pixels must be in [0, 1]; if "
                    "they are normalised model inputs (as most distillation methods store them) "
                    "pass image_space='model' (CLI: --image-space model)"
                )
            elif quantize:
                images = (images * 255).round().clamp(0, 255).to(torch.uint8)
        elif image_space == "model":
            raise ValueError("image_space='model' needs float images; uint8 images are pixels")
        if labels is None and targets is None:
            raise ValueError("give labels (N, K soft labels) or targets (N,) class indices")
        if (mean is None) != (std is None):
            raise ValueError("give both mean= and std= (the normalisation of the images), or neither")
        if labels is None:
            k = num_classes or int(targets.max()) + 1
            check_targets(targets, num_classes=k, n=images.shape[0])
            labels = torch.nn.functional.one_hot(targets.long(), k).float()
            manifest.setdefault("label_codec", "hard")
        labels = check_labels(labels.float(), n=images.shape[0], num_classes=num_classes)
        sums = labels.sum(1)
        if (sums == 0).any():
            raise ValueError(
                f"label row {int((sums == 0).nonzero()[0])} is all zero: a student learns nothing "
                "from that image; drop it or give it a label"
            )
        if not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
            bad = int((sums - 1).abs().argmax())
            raise ValueError(
                f"label rows must sum to 1 (row {bad} sums to {float(sums[bad]):.4f}); renormalise "
                "them with labels / labels.sum(1, keepdim=True)"
            )
        if targets is None:
            targets = labels.argmax(1)
        man = {"source": "user", **manifest}
        if mean is not None:
            man["mean"], man["std"] = list(mean), list(std)
        return cls(images, labels, targets.long(), man)

    @classmethod
    def from_file(cls, path: str | Path, *, num_classes: int | None = None, **manifest) -> CompressedSet:
        """Load a user's set: .npz (no pickle) or .safetensors with ``images`` and ``labels`` and/or
        ``targets`` (``num_classes``: how many classes targets index); or a softlabels compressed set."""
        import numpy as np

        path = Path(path)
        if not path.exists():
            raise DataNotFoundError(f"{path} does not exist")
        if path.suffix == ".safetensors":
            tensors, meta = load_tensors(path)
            if "manifest" in meta:
                return cls.load(path)
        elif path.suffix == ".npz":
            with open(path, "rb") as f:
                head = f.read(4)
            if head != b"PK\x03\x04":  # an .npz is a zip archive
                raise CorruptFileError(f"{path} is not an .npz archive (write one with numpy.savez(path, "
                                       "images=..., labels=...))")
            try:
                with np.load(path, allow_pickle=False) as z:
                    tensors = {k: torch.from_numpy(np.ascontiguousarray(z[k])) for k in z.files}
            except ValueError as e:
                raise ValueError(f"{path} holds object arrays, which would need pickle; store plain numeric "
                                 f"arrays ({e})") from None
            except Exception as e:
                raise CorruptFileError(
                    f"{path}: cannot read the .npz archive ({e}); it may be truncated"
                ) from None
        else:
            raise ValueError(f"{path}: unsupported suffix {path.suffix!r}; use .npz or .safetensors")
        if "images" not in tensors:
            raise ValueError(f"{path} needs an 'images' array (N, C, H, W); it has {sorted(tensors)}")
        images = tensors["images"]
        if images.ndim == 3:
            images = images.unsqueeze(1)
        elif images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
            images = images.permute(0, 3, 1, 2).contiguous()
        labels = tensors.get("labels")
        return cls.from_arrays(images, labels.float() if labels is not None else None,
                               targets=tensors.get("targets"), num_classes=num_classes, source_file=str(path),
                               **manifest)


def _measured(payload: dict[str, torch.Tensor], targets: torch.Tensor) -> dict[str, int]:
    """Payload bytes measured from the stored tensors (a file's manifest is not trusted for them)."""
    def size(prefix: str) -> int:
        return sum(t.numel() * t.element_size() for k, t in payload.items() if k.startswith(prefix))

    images, labels = size("images."), size("labels.")
    return {"images": images, "labels": labels, "total": images + labels, "aux": int(targets.numel() * 8)}


def _row_sum_tolerance(label_spec: str, num_classes: int) -> float:
    """Row-sum slack for labels decoded by ``label_spec`` (quantised labels may sum slightly above one)."""
    from .codecs import label_codec

    return label_codec(label_spec).row_sum_excess(num_classes) + 1e-3


def _encode(cset: CompressedSet, image_spec: str, label_spec: str):
    from .codecs import encoded_to_safetensors_dict, image_codec, label_codec

    ienc = image_codec(image_spec).encode(cset.images)
    images = image_codec(image_spec).decode(ienc)  # what a loader sees: a projector label codec reads these
    lenc = label_codec(label_spec).encode(cset.labels, images=images)
    ti, mi = encoded_to_safetensors_dict(ienc, "images")
    tl, ml = encoded_to_safetensors_dict(lenc, "labels")
    nb = {"images": int(ienc.nbytes), "labels": int(lenc.nbytes), "total": int(ienc.nbytes + lenc.nbytes),
          "aux": int(cset.targets.numel() * 8)}
    decoded = (images, label_codec(label_spec).decode(lenc, images=images))
    return ({**ti, **tl}, {**mi, **ml}, nb), decoded, nb
