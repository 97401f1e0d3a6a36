"""Atomic writes, content hashes and safetensors helpers shared by every artifact."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .validation import CorruptFileError, DataNotFoundError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename; the file gets
    the mode a plain ``open`` would give it (0666 less the umask), not the temporary file's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.exists():
        raise DataNotFoundError(f"{path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptFileError(f"{path} is not valid JSON ({e}); delete it to recompute") from None


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON")


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def config_hash(obj: Any, *, length: int = 16) -> str:
    """A stable hash of a JSON-able config (dict or dataclass ``asdict``)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def tensor_hash(*tensors: torch.Tensor, length: int = 16) -> str:
    """Hash of tensors' dtype, shape and bytes (CPU, contiguous)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:length]


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], *,
                 metadata: Mapping[str, str] | None = None) -> Path:
    """Save tensors with safetensors, atomically."""
    from safetensors.torch import save

    data = save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
                metadata=dict(metadata) if metadata else None)
    return atomic_write_bytes(path, data)


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file; a truncated or malformed file raises ``CorruptFileError``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise DataNotFoundError(f"{path} does not exist")
    try:
        out: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            for k in f.keys():
                out[k] = f.get_tensor(k)
        return out, meta
    except Exception as e:  # safetensors raises SafetensorError / OSError variants
        raise CorruptFileError(f"{path} is not a valid safetensors file ({e}); it may be truncated") from None
