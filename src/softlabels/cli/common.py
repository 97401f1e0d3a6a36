"""What every command shares: the common options, the lab they describe, the console, small parsers."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

DEFAULT_OUT = "softlabels-out"


def positive_int(v: str, *, what: str = "expected a positive integer") -> int:
    try:
        n = int(v)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{what}, got {v!r}")
    return n


def workers_type(v: str) -> int | str:
    if v in ("auto", "ray"):
        return v
    return positive_int(v, what="--workers takes 'auto', 'ray' or a positive integer")


def add_common(p: argparse.ArgumentParser, *, preset: bool = True) -> None:
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: ./{DEFAULT_OUT})")
    p.add_argument("--dataset", default=None, help="dataset name (default: the preset's, fashion-mnist)")
    p.add_argument("--root", default=None, help="where the dataset's files are (default: search)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    if preset:
        p.add_argument(
            "--preset", default="default",
            help="settings bundle: default (CPU), smoke, paper (GPU; picks paper-cifar10 / -cifar100 / -tiny "
                 "by --dataset), paper-imagenet (softlabels.list_presets())"
        )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--workers", default="auto", type=workers_type,
                   help="where students train: auto (default: parallel processes on CPU only for long "
                        "small-batch sweeps, where it was measured to pay), N processes (1 = all in this "
                        "process), or ray (each student a Ray task; the cluster at RAY_ADDRESS, else a local "
                        "one; needs pip install 'softlabels[ray]')")


def check_out(out: str | Path) -> Path:
    """The output folder must be a folder (or creatable as one) and writable: checked before any work."""
    import os

    path = Path(out)
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(f"--out {out}: {probe} is a file, not a folder; choose another --out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {out}: {probe} is not writable; choose another --out")
    store = path / "results.sqlite"
    if store.exists() and store.is_dir():
        raise IsADirectoryError(
            f"{store} is a folder, not a results store; move it away or choose another --out"
        )
    return path


def make_lab(args, preset):
    """The lab the common options describe, on the preset's data (``--dataset`` overrides its name); the
    output folder and the device are checked first."""
    from ..lab import Lab

    data = preset.data if args.dataset is None else preset.data.replace(name=args.dataset)
    return Lab(check_out(args.out), data=data, device=args.device, root=args.root, progress=not args.quiet,
               workers=args.workers)


def console():
    from rich.console import Console

    # wide tables stay readable when output goes to a file or pipe (no terminal width to measure)
    return Console(width=None if sys.stdout.isatty() else max(160, shutil.get_terminal_size().columns))


def parse_value(text: str):
    """``3`` -> 3, ``0.5`` -> 0.5, ``true``/``false``, ``none``, ``1,2,4`` -> [1, 2, 4], else the string; a
    value holding ``;`` is a list split on ``;`` only (for specs that contain commas, e.g. codecs)."""
    t = text.strip()
    if ";" in t:
        return [v.strip() for v in t.split(";") if v.strip()]
    if "," in t:
        return [parse_value(v) for v in t.split(",") if v.strip()]
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for cast in (int, float):
        try:
            return cast(t)
        except ValueError:
            pass
    return t


def key_values(items: list[str] | None, flag: str) -> dict:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values through :func:`parse_value`)."""
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"{flag} takes KEY=VALUE, got {item!r}")
        out[key] = parse_value(value)
    return out
