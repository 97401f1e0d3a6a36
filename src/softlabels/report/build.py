"""``softlabels report``: one document gathering the main job and every study, from what is stored.

Reads ``<out>/studies/*/summary.json`` (written by ``run_study``), the main job's ``report.md`` and
``baseline.png`` if present, and the results store (run counts). Writes ``<out>/report-all.md`` and,
if asked, ``report-all.html`` with the same content. It never trains anything and never touches the
main job's ``report.md``.
"""

from __future__ import annotations

import csv
import html as _html
import json
import math
import re
from pathlib import Path
from typing import Any

from ..config import PROTOCOL_NOTES
from ..io import atomic_write_text
from ..validation import DataNotFoundError

REPORT_NAME = "report-all"
# paper order (E2, E4, E5, E6, E7, E8/9, E10, E14, then storage budgets); unknown names follow sorted
STUDY_ORDER = ("expert-epoch", "temperature", "swap", "knowledge", "scaling", "ensemble", "selection",
               "labels", "bytes")
STUDY_TITLES = {
    "expert-epoch": "Expert epoch (paper E2, Fig. 2, Table 7)",
    "temperature": "Expert epoch × temperature (paper E4, Fig. 4)",
    "swap": "Label swap test (paper E5, Fig. 3)",
    "knowledge": "Zero-shot and knowledge removal (paper E6, Fig. 7)",
}


def build_report(out_dir: str | Path, *, html: bool = False) -> Path:
    """Write ``out_dir/report-all.md`` (and ``.html``) from the stored summaries; return the .md path."""
    out = Path(out_dir)
    if not out.is_dir():
        raise DataNotFoundError(f"{out} is not a folder; run `softlabels run` or `softlabels study NAME` "
                                "with --out there first")
    summaries = _load_summaries(out)
    counts = _run_counts(out)
    lines = [f"# softlabels results: {out.name}", ""]
    lines += [f"{len(summaries)} studies with saved summaries"
              + (f"; {sum(counts.values())} student runs in `results.sqlite`." if counts is not None else
                 "; no results store (`results.sqlite`) found."), ""]
    lines += _main_job(out)
    for name, s in summaries:
        lines += _study_section(out, name, s, counts)
    if counts:
        lines += ["## Stored runs by study", "", "| study | runs |", "|---|---:|"]
        lines += [f"| {name or '(none)'} | {n} |" for name, n in sorted(counts.items())]
        lines.append("")
    md = "\n".join(lines)
    path = atomic_write_text(out / f"{REPORT_NAME}.md", md)
    if html:
        atomic_write_text(out / f"{REPORT_NAME}.html", markdown_to_html(md, title=f"softlabels: {out.name}"))
    return path


# ---------------------------------------------------------------------------------------------------------
# gathering


def _load_summaries(out: Path) -> list[tuple[str, dict]]:
    found: dict[str, dict] = {}
    for f in sorted((out / "studies").glob("*/summary.json")):
        try:
            found[f.parent.name] = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            found[f.parent.name] = {"error": f"cannot read {f}: {e}"}
    order = [n for n in STUDY_ORDER if n in found] + sorted(n for n in found if n not in STUDY_ORDER)
    return [(n, found[n]) for n in order]


def _run_counts(out: Path) -> dict[str, int] | None:
    """Stored runs per study name, or ``None`` when there is no store (none is created)."""
    path = out / "results.sqlite"
    if not path.exists():
        return None
    from ..store import ResultsStore

    with ResultsStore(path) as store:
        return {name: len(store.query(study=name)) for name in store.studies()}


def _main_job(out: Path) -> list[str]:
    md, png = out / "report.md", out / "baseline.png"
    if not md.exists() and not png.exists():
        return []
    lines = ["## Main job: soft vs hard labels (`softlabels run`)", ""]
    if md.exists():
        body = md.read_text(encoding="utf-8").splitlines()
        if body and body[0].startswith("# "):
            lines += [f"Source: [report.md](report.md) — {body[0][2:]}", ""]
            body = body[1:]
        # demote headings by two levels so they nest under this section; skip its own image (added below)
        body = [("##" + ln) if ln.startswith("#") else ln for ln in body if not ln.startswith("![")]
        lines += body
    if png.exists():
        lines += ["", "![accuracy vs IPC](baseline.png)"]
    return [*lines, ""]


def _title(name: str) -> str:
    if name in STUDY_TITLES:
        return STUDY_TITLES[name]
    from ..studies import list_studies

    doc = list_studies().get(name, "")
    return f"{name}: {doc}" if doc else name


def _study_section(out: Path, name: str, s: dict, counts: dict[str, int] | None) -> list[str]:
    lines = [f"## {_title(name)}", ""]
    if "error" in s:
        return [*lines, f"*{s['error']}*", ""]
    if s.get("finding"):
        lines += [f"**Finding.** {s['finding']}", ""]
    rows = s.get("rows") or []
    if rows:
        lines += _md_table(rows, _csv_columns(out / "studies" / name / "table.csv")) + [""]
    protocol = s.get("protocol", "clean")
    lines += [f"*Protocol:* {PROTOCOL_NOTES.get(protocol, protocol)}.", ""]
    settings = s.get("settings") or {}
    if settings:
        lines += ["*Settings:*", ""]
        lines += [f"- {k}: `{_compact(v)}`" for k, v in settings.items()]
        lines.append("")
    summary = s.get("summary") or {}
    if summary:
        lines += ["*Key numbers:*", ""]
        lines += [f"- {k}: `{_compact(v)}`" for k, v in summary.items()]
        lines.append("")
    folder = out / "studies" / name
    for fig in s.get("figures") or []:
        rel = f"studies/{name}/{fig}"
        if (folder / fig).exists():
            lines.append(f"![{name}: {Path(fig).stem}]({rel})")
            svg = Path(fig).with_suffix(".svg").name
            if (folder / svg).exists():
                lines.append(f"[SVG](studies/{name}/{svg})")
            lines.append("")
        else:
            lines += [f"*figure {rel} is missing*", ""]
    stored = None if counts is None else counts.get(name, 0)
    lines += [f"Stored runs for study `{name}`: {'no results store' if stored is None else stored} "
              f"(table: [studies/{name}/table.csv](studies/{name}/table.csv)).", ""]
    return lines


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return _compact(v)
    return str(v).replace("|", "\\|")


def _compact(v: Any) -> str:
    def clean(o: Any) -> Any:
        if isinstance(o, float):
            return None if math.isnan(o) else float(f"{o:.4g}")
        if isinstance(o, dict):
            return {k: clean(x) for k, x in o.items()}
        if isinstance(o, list):
            return [clean(x) for x in o]
        return o

    return json.dumps(clean(v), separators=(", ", ": ")).replace("`", "'")


def _csv_columns(path: Path) -> list[str]:
    """The study's column order (summary.json stores rows with sorted keys; table.csv keeps the order)."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return next(csv.reader(f), [])
    except OSError:
        return []


def _md_table(rows: list[dict], order: list[str] | None = None) -> list[str]:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    cols = [c for c in (order or []) if c in keys] + [k for k in keys if k not in (order or [])]
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return out


# ---------------------------------------------------------------------------------------------------------
# markdown -> HTML (the subset this report writes: headings, tables, lists, images, paragraphs)


def _inline(text: str) -> str:
    t = _html.escape(text, quote=False)
    t = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", lambda m: f'<img alt="{m[1]}" src="{m[2]}">', t)
    t = re.sub(r"\[([^\]]+)\]\(([^)]+)\)", lambda m: f'<a href="{m[2]}">{m[1]}</a>', t)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)
    t = re.sub(r"(?<![\w*])\*([^*]+)\*(?![\w*])", r"<em>\1</em>", t)
    return t


def _cells(line: str) -> list[str]:
    parts = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [p.strip().replace("\\|", "|") for p in parts]


def markdown_to_html(md: str, *, title: str = "report") -> str:
    """Simple HTML for the markdown subset written by :func:`build_report`."""
    body: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        ln = lines[i]
        if not ln.strip():
            i += 1
        elif m := re.match(r"(#{1,6}) (.*)", ln):
            n = len(m[1])
            body.append(f"<h{n}>{_inline(m[2])}</h{n}>")
            i += 1
        elif ln.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            head = _cells(block[0])
            rows = [_cells(r) for r in block[2:]] if len(block) > 1 and set(block[1]) <= set("|-: ") else \
                [_cells(r) for r in block[1:]]
            thead = "".join(f"<th>{_inline(h)}</th>" for h in head)
            tbody = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
            body.append(f"<table><thead><tr>{thead}</tr></thead><tbody>{tbody}</tbody></table>")
        elif ln.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not re.match(r"(#{1,6} |\||- )", lines[i]):
                para.append(lines[i])
                i += 1
            body.append(f"<p>{_inline(' '.join(para))}</p>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.4}"
             "table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f3f3f3}"
             "img{max-width:100%}code{background:#f6f6f6;font-size:0.85em;word-break:break-all}")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{_html.escape(title)}</title><style>{style}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


__all__ = ["build_report", "markdown_to_html", "REPORT_NAME"]
