"""The bytes study's figure: accuracy against stored bytes."""

from __future__ import annotations

from collections import defaultdict

from ..sets.label_codecs import short_label_codec
from ..units import format_bytes

__all__ = ["plot_bytes"]


def plot_bytes(rows: list[dict], budgets: list[tuple[str, int]], path, *, dataset: str):
    """Accuracy vs stored bytes: the hard-label curve, a curve per soft codec, the frontier, the budgets."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from ..report.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    markers = "sD^v<>pPX*hH8d"
    soft_codecs = list(dict.fromkeys(r["label_codec"] for r in rows if r["label_codec"] != "hard"))
    cmap = plt.get_cmap("tab10")
    hard = sorted(
        (r for r in rows if r["label_codec"] == "hard" and r["test_mean"] == r["test_mean"]),
        key=lambda r: r["bytes_total"],
    )
    if hard:
        ax.plot(
            [r["bytes_total"] for r in hard],
            [100 * r["test_mean"] for r in hard],
            "o-",
            color="0.35",
            label="hard labels",
            zorder=3,
        )
    for k, codec in enumerate(soft_codecs):
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for r in rows:
            if r["label_codec"] == codec and r["test_mean"] == r["test_mean"]:
                groups[(r["expert_epoch"], r["image_codec"])].append(r)
        for g, (_key, pts) in enumerate(sorted(groups.items(), key=lambda t: str(t[0]))):
            pts.sort(key=lambda r: r["bytes_total"])
            ax.plot(
                [r["bytes_total"] for r in pts],
                [100 * r["test_mean"] for r in pts],
                linestyle="-",
                linewidth=0.8,
                marker=markers[k % len(markers)],
                color=cmap(k % 10),
                alpha=0.9 if g == 0 else 0.5,
                label=f"soft {short_label_codec(codec)}" if g == 0 else None,
                zorder=2,
            )
    front = sorted((r for r in rows if r["on_frontier"]), key=lambda r: r["bytes_total"])
    if front:
        ax.step(
            [r["bytes_total"] for r in front],
            [100 * r["test_mean"] for r in front],
            where="post",
            color="black",
            linewidth=1.4,
            label="Pareto frontier",
            zorder=4,
        )
    sizes = [r["bytes_total"] for r in rows]
    for label, b in budgets:
        if sizes and not min(sizes) / 2 <= b <= 2 * max(sizes):
            continue  # far outside the measured range: in the summary, not on the plot
        ax.axvline(b, color="tab:red", linestyle=":", linewidth=1)
        ax.text(
            b,
            0.98,
            f" {label}",
            color="tab:red",
            fontsize=7,
            rotation=90,
            va="top",
            transform=ax.get_xaxis_transform(),
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: format_bytes(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("stored bytes (images + labels)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{dataset}: accuracy vs storage (clean protocol, final epoch)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    return save_figure(fig, path, svg=True)
