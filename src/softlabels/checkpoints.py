"""Checkpoint files: SHA-256 of a file, and a state dict read from a safetensors or PyTorch file without ever
unpickling code (``torch.load(weights_only=True)`` only); the external experts' per-read hash check."""

from __future__ import annotations

import argparse
import hashlib
import pickle
from pathlib import Path

import torch

from .io import load_tensors
from .validation import CorruptFileError, DataNotFoundError, SoftlabelsError

__all__ = ["CHECKPOINT_SUFFIXES", "UnsafeCheckpointError", "check_external_files", "file_sha256",
           "read_external_checkpoint", "read_state_dict"]

#: File suffix -> checkpoint format.
CHECKPOINT_SUFFIXES = {".safetensors": "safetensors", ".pt": "torch", ".pth": "torch"}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class UnsafeCheckpointError(SoftlabelsError, ValueError):
    """A PyTorch checkpoint that ``torch.load(weights_only=True)`` refuses: unpickling it would run code."""


def read_state_dict(path: Path, kind: str) -> dict[str, torch.Tensor]:
    """The state dict in one checkpoint file (never unpickling code)."""
    if kind == "safetensors":
        return load_tensors(path)[0]
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        what = str(e).split("\n")[0][:160]
        raise UnsafeCheckpointError(
            f"{path}: refused, torch.load(weights_only=True) rejects it ({what}); save plain state dicts "
            "(torch.save(model.state_dict(), ...)) or safetensors instead"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CorruptFileError(f"{path} is not a readable PyTorch checkpoint ({first})") from None
    if isinstance(obj, dict):
        for holder in ("model", "state_dict"):
            if isinstance(obj.get(holder), dict):
                obj = obj[holder]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CorruptFileError(f"{path} holds no state dict (a dict of tensors, or one under 'model' or "
                               "'state_dict')")
    if obj and all(k.startswith("module.") for k in obj):  # saved from a DataParallel wrapper
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def check_external_files(manifest: dict) -> None:
    """Every checkpoint file of an external expert is where the manifest says, with its recorded size."""
    for c in manifest["checkpoints"]:
        f = Path(c["file"])
        if not f.is_file():
            raise DataNotFoundError(f"expert {manifest['key']}: checkpoint {f} is gone; put it back or load "
                                    "the folder again (load_external_trajectory)")
        if f.stat().st_size != int(c["bytes"]):
            raise CorruptFileError(f"expert {manifest['key']}: {f} changed since it was loaded (size); load "
                                   "the folder again to make it a new expert")


def read_external_checkpoint(entry: dict) -> dict[str, torch.Tensor]:
    """One external checkpoint's state dict, after checking its SHA-256 against the manifest."""
    f = Path(entry["file"])
    if not f.is_file():
        raise DataNotFoundError(f"checkpoint {f} is gone; put it back or load the folder again")
    if file_sha256(f) != entry["sha256"]:
        raise CorruptFileError(f"{f} changed since it was loaded (SHA-256 differs); load the folder again to "
                               "make it a new expert")
    return read_state_dict(f, entry["format"])
