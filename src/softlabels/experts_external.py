"""Experts made elsewhere: a folder of per-epoch checkpoints loaded as a
:class:`~softlabels.experts.Trajectory`.

ImageNet users will not train 90-epoch ResNet experts here; the paper's ImageNet experts are torchvision's
reference script's ``model_<E>.pth`` files (paper.md section 4b). :func:`load_external_trajectory` reads
such a folder:

- **Files.** ``<anything><E>.safetensors``, ``<anything><E>.pt`` or ``<anything><E>.pth``: the integer that
  ends the file's stem is its expert epoch ``E`` (``model_30.pth`` -> 30, ``epoch_005.safetensors`` -> 5; the
  paper's "expert epoch E" is torchvision's ``model_E.pth``). Other files (``checkpoint.pth``, logs) are left
  alone. Gaps are allowed: the trajectory has the epochs it has files for.
- **Content.** A state dict; a ``.pt``/``.pth`` may also be a dict holding it under ``"model"`` or
  ``"state_dict"`` (torchvision's checkpoints), and a ``module.`` prefix (DataParallel) is dropped.
- **Safety.** ``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)`` only (plus
  ``argparse.Namespace``, the ``args`` torchvision stores, an attribute bag that runs no code): a pickle that
  would run code is refused.
- **Checks.** Every checkpoint must load with ``strict=True`` into the named architecture, or the call fails
  naming the file and the first mismatching keys, before anything is written.
- **Identity.** Our manifest (recipe kind ``"external"``, the source folder, per-file SHA-256) is written to
  ``<root>/experts/<key>/manifest.json``; ``key`` hashes the architecture and the files' hashes (not the
  folder's path), so it keys labels and runs like a trained expert. Opening it again checks every file is
  still there with its size; each checkpoint's SHA-256 is checked again whenever it is read, so a changed file
  is never used.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch

from .checkpoints import CHECKPOINT_SUFFIXES, UnsafeCheckpointError, file_sha256, read_state_dict
from .data.prepared import PreparedData
from .experts import FORMAT, Trajectory
from .io import config_hash, write_json
from .models import get_model_spec, init_model
from .validation import DataNotFoundError, check_choice, check_positive_int
from .version import __version__

__all__ = ["CHECKPOINT_SUFFIXES", "UnsafeCheckpointError", "external_checkpoints", "load_external_trajectory"]

FORMATS = ("auto", "safetensors", "torch")
_EPOCH = re.compile(r"(\d+)$")


def external_checkpoints(folder: str | Path, *, format: str = "auto") -> list[tuple[int, Path]]:
    """``(epoch, file)`` of every checkpoint file in ``folder``, by epoch (see the module docstring)."""
    check_choice("format", format, FORMATS)
    base = Path(folder).expanduser()
    if not base.is_dir():
        raise DataNotFoundError(f"expert folder {base} does not exist or is not a folder")
    found: dict[int, Path] = {}
    for f in sorted(base.iterdir()):
        kind = CHECKPOINT_SUFFIXES.get(f.suffix.lower())
        m = _EPOCH.search(f.stem)
        if not f.is_file() or kind is None or m is None or format not in ("auto", kind):
            continue
        epoch = int(m.group(1))
        if epoch in found:
            raise ValueError(f"{found[epoch].name} and {f.name} are both expert epoch {epoch}; keep one")
        found[epoch] = f
    if not found:
        suffixes = ", ".join(CHECKPOINT_SUFFIXES) if format == "auto" else \
            ", ".join(s for s, k in CHECKPOINT_SUFFIXES.items() if k == format)
        raise DataNotFoundError(f"no checkpoint files in {base}: expected names ending in an epoch number "
                                f"and {suffixes}, e.g. model_30.pth or epoch_5.safetensors")
    return sorted(found.items())


def _check_fits(path: Path, state: dict[str, torch.Tensor], net: torch.nn.Module, model: str) -> None:
    ref = net.state_dict()
    missing, unexpected = sorted(set(ref) - set(state)), sorted(set(state) - set(ref))
    if missing or unexpected:
        raise ValueError(f"{path.name} does not load into {model} (strict): missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}; check --expert-model and its width")
    for k in ref:  # in the model's order: the first layer that differs is named
        v = state[k]
        if tuple(v.shape) != tuple(ref[k].shape):
            raise ValueError(f"{path.name} does not load into {model}: {k} has shape {tuple(v.shape)}, the "
                             f"model's is {tuple(ref[k].shape)}; check the model, width, classes, image size")
    net.load_state_dict(state, strict=True)


def load_external_trajectory(folder: str | Path, *, model: str, root: str | Path, width: int | None = None,
                             prepared: PreparedData | None = None, num_classes: int | None = None,
                             in_channels: int | None = None, image_size: Sequence[int] | None = None,
                             format: str = "auto", evaluate: bool = False,
                             epochs: Sequence[int] | None = None,
                             device: str | torch.device = "cpu") -> Trajectory:
    """The checkpoints in ``folder`` as a :class:`Trajectory` of the registered architecture ``model``
    (``width`` overrides its width), with its manifest under ``root`` (a lab's folder).

    The classes, channels and image size come from ``prepared`` (the data the expert will label) or are
    given. ``evaluate`` (needs ``prepared``) records each checkpoint's validation and test accuracy, which
    the expert-epoch sweep uses to skip checkpoints at chance; without it the sweep keeps every candidate.
    ``epochs`` keeps only those epochs' files.
    """
    if prepared is not None:
        ds = prepared.dataset
        num_classes, in_channels = ds.num_classes, ds.image_shape[0]
        image_size = tuple(ds.image_shape[1:])
    if num_classes is None or in_channels is None or image_size is None:
        raise ValueError("give prepared= (the data it will label) or num_classes, in_channels and image_size")
    check_positive_int("num_classes", num_classes)
    check_positive_int("in_channels", in_channels)
    image_size = tuple(check_positive_int("image size", int(s)) for s in image_size)
    if evaluate and prepared is None:
        raise ValueError("evaluate=True needs prepared= (the validation and test images)")
    spec = get_model_spec(model, **({"width": width} if width else {}))  # unknown name: closest match
    files = external_checkpoints(folder, format=format)
    if epochs is not None:
        wanted = {check_positive_int("epoch", e, minimum=0) for e in epochs}
        absent = sorted(wanted - {e for e, _ in files})
        if absent:
            raise DataNotFoundError(f"{folder} has no checkpoint of epoch(s) {absent}")
        files = [(e, f) for e, f in files if e in wanted]
    net = init_model(model, width, seed=0, in_channels=in_channels, num_classes=num_classes,
                     image_size=image_size)
    entries, states = [], {}
    for epoch, f in files:
        kind = CHECKPOINT_SUFFIXES[f.suffix.lower()]
        sha = file_sha256(f)
        state = read_state_dict(f, kind)
        _check_fits(f, state, net, model)
        entries.append({"epoch": epoch, "step": epoch, "file": str(f.resolve()), "format": kind,
                        "sha256": sha, "bytes": f.stat().st_size})
        if evaluate:
            states[epoch] = state
    arch = {"model": model, "width": width, "num_classes": num_classes, "in_channels": in_channels,
            "image_size": list(image_size)}
    key = config_hash({"kind": "external", **arch, "files": [[c["epoch"], c["sha256"]] for c in entries]})
    path = Path(root) / "experts" / key
    if (path / "manifest.json").exists():
        old = Trajectory.open(path)
        if not evaluate or all("test_acc" in h for h in old.history()):
            return old
    history = [{"epoch": c["epoch"], "step": c["epoch"]} for c in entries]
    if evaluate:
        history = [dict(h, **_accuracies(net, states[h["epoch"]], prepared, device)) for h in history]
    manifest = {
        "format": FORMAT, "key": key, "kind": "expert", "softlabels_version": __version__,
        "recipe": {"kind": "external", "model": model, "width": width, "source": str(Path(folder).resolve()),
                   "format": format},
        "model_spec": spec.to_dict(), "num_classes": num_classes, "in_channels": in_channels,
        "image_size": list(image_size), "dataset": None if prepared is None else prepared.dataset.name,
        "total_steps": entries[-1]["step"], "checkpoints": entries, "history": history,
    }
    path.mkdir(parents=True, exist_ok=True)
    write_json(path / "manifest.json", manifest)
    return Trajectory(path, manifest)


def _accuracies(net: torch.nn.Module, state: dict, prepared: PreparedData, device) -> dict[str, float]:
    from .engine.evaluation import accuracy, predict

    net.load_state_dict(state)
    dev = torch.device(device)
    net = net.to(dev)
    out = {}
    for part in ("val", "test"):
        if part == "val" and not prepared.val_idx.numel():
            continue
        x, y = prepared.tensors(part, device=dev)
        out[f"{part}_acc"] = accuracy(predict(net, x), y)
    return out
