"""Figures, written as PNG (and SVG where asked) with a non-interactive backend."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(fig, path: Path, *, svg: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    tmp.replace(path)
    if svg:
        svg_path = path.with_suffix(".svg")
        tmp = svg_path.with_name(f".{svg_path.stem}.tmp.svg")
        fig.savefig(tmp, bbox_inches="tight")
        tmp.replace(svg_path)
    plt.close(fig)
    return path


def merged_legend(ax, twin, **kwargs) -> None:
    """One legend on ``ax`` for the lines of ``ax`` and of its ``twinx()`` axis ``twin``."""
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, **kwargs)


def plot_baseline(result, path: Path, *, dataset: str) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for kind, color in (("hard", "tab:gray"), ("soft", "tab:blue")):
        rows = [r for r in result.rows if r.label == kind]
        if not rows:
            continue
        ax.errorbar([r.ipc for r in rows], [100 * r.mean for r in rows], yerr=[100 * r.std for r in rows],
                    marker="o", capsize=3, color=color, label=f"{kind} labels")
    ax.set_xscale("log")
    ax.set_xlabel("images per class (IPC)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{dataset}: random real images, {result.protocol} protocol", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
