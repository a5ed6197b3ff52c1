"""Readable tables: fixed decimals per column, numbers right-aligned, `± stderr` beside accuracies,
constant columns moved to a note, best cells marked; rendered as HTML (scrolls when wide), as a
standalone HTML page (the Snakemake report) and as Markdown. Light: no torch, no matplotlib.
"""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field

METRIC_RE = re.compile(r"^(?P<kind>ppl|bpb)/(?P<domain>.+)_(?P<split>train|validation|test)/s(?P<seqlen>[0-9]+)$")
ID_COLS = ("size", "method", "budget", "replicate", "finetune", "quant", "scheme", "dataset")

CSS = ("body{font-family:system-ui,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222;line-height:1.4}"
       ".scroll{overflow-x:auto;margin:.5em 0}table{border-collapse:collapse;font-size:.86em}"
       "td,th{padding:3px 9px;border-bottom:1px solid #ddd;white-space:nowrap}th{text-align:left;background:#f4f4f4}"
       "td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}td.best{font-weight:bold;background:#e9f6e9}"
       ".note{background:#fff6dd;padding:.4em .8em}.tnote{font-size:.8em;color:#555;margin:.1em 0 1em}"
       ".lead{font-size:1.05em}pre{white-space:pre-wrap;background:#f6f6f6;padding:.8em}"
       "img{max-width:100%}figcaption,.caption{font-size:.85em;color:#555}")


def is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v == ""


def short_tokens(n) -> str:
    """256000 -> '256k', 1499136 -> '1.5M', 0 -> '0' (3 significant digits)."""
    if is_missing(n):
        return "–"
    n = float(n)
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.3g}"


def decimals(column: str, values) -> int | None:
    """Fixed decimals of a numeric column (None: integers with thousands separators)."""
    name = column.lower()
    if name.startswith("ppl") or "perplexity" in name:
        return 2
    if name.startswith("bpb") or "bits_per_byte" in name or "rel_weight_err" in name:
        return 3
    if name.startswith("zs/") or "acc" in name:
        return 3
    if "params" in name or name in ("tokens", "steps", "rows"):
        return None
    nums = [abs(float(v)) for v in values if not is_missing(v)]
    if nums and all(float(v).is_integer() for v in nums):
        return None
    top = max(nums) if nums else 1.0
    return max(0, min(4, 3 - math.floor(math.log10(top)))) if top > 0 else 2


def fmt(value, places: int | None) -> str:
    if is_missing(value):
        return "–"
    if isinstance(value, str):
        return value
    if places is None:
        return f"{int(round(float(value))):,}"
    return f"{float(value):.{places}f}"


def signed_pct(value, ref) -> str:
    """Relative change in percent, signed: '+1.7%'."""
    if is_missing(value) or is_missing(ref) or not ref:
        return "–"
    return f"{(float(value) / float(ref) - 1) * 100:+.1f}%"


@dataclass
class Table:
    """Formatted cells plus what rendering needs: which columns are numbers (right-aligned), which
    cells are marked best, and notes printed under the table."""
    name: str
    columns: list
    rows: list  # lists of strings
    numeric: list = field(default_factory=list)  # per column
    best: set = field(default_factory=set)  # (row, column) indices
    notes: list = field(default_factory=list)
    groups: list = field(default_factory=list)  # (label, span) over the columns: a header row above them

    def __post_init__(self):
        if not self.numeric:
            self.numeric = [c not in ID_COLS and c != "what changes" for c in self.columns]

    def html(self) -> str:
        head = "".join(f"<th class='{'num' if n else ''}'>{html.escape(str(c))}</th>" for c, n in zip(self.columns, self.numeric))
        body = []
        for i, row in enumerate(self.rows):
            cells = []
            for j, (v, n) in enumerate(zip(row, self.numeric)):
                cls = " ".join(x for x in ("num" if n else "", "best" if (i, j) in self.best else "") if x)
                cells.append(f"<td class='{cls}'>{html.escape(str(v))}{' ★' if (i, j) in self.best else ''}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        notes = "".join(f"<p class='tnote'>{html.escape(n)}</p>" for n in self.notes)
        if self.groups:
            head = "".join(f"<th colspan='{n}' style='text-align:center'>{html.escape(str(g))}</th>"
                           for g, n in self.groups) + f"</tr><tr>{head}"
        return (f"<div class='scroll'><table id='table-{html.escape(self.name)}'><thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(body)}</tbody></table></div>{notes}")

    def markdown(self) -> str:
        from tabulate import tabulate

        rows = [[f"**{v}** ★" if (i, j) in self.best else v for j, v in enumerate(r)] for i, r in enumerate(self.rows)]
        labels = [g for g, n in self.groups for _ in range(n)] if self.groups else [""] * len(self.columns)
        headers = [f"{g} {c}".strip() for g, c in zip(labels, self.columns)]
        text = tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True,
                        colalign=["right" if n else "left" for n in self.numeric])
        return text + "\n" + "".join(f"\n*{n}*\n" for n in self.notes)

    def page(self, title: str, caption: str = "") -> str:
        """A standalone HTML page (what the Snakemake report shows for this table)."""
        cap = f"<p class='caption'>{html.escape(caption)}</p>" if caption else ""
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{CSS}</style></head><body><h3>{html.escape(title)}</h3>{cap}{self.html()}</body></html>\n")


def frame_table(name: str, df, keep=(), headers: dict | None = None, stderr: bool = True) -> Table:
    """A Table from a DataFrame of raw values: columns whose values are all equal (or all missing)
    become a note (unless in `keep`); numbers get their column's fixed decimals; a column `X` with
    a partner `X_stderr` prints as 'X ± stderr'."""
    headers = headers or {}
    cols, notes = [], []
    for c in df.columns:
        if stderr and c.endswith("_stderr") and c[:-len("_stderr")] in df.columns:
            continue
        vals = [v for v in df[c].tolist() if not is_missing(v)]
        if not vals:
            continue
        if len(df) > 1 and c not in keep and len({str(v) for v in vals}) == 1 and len(vals) == len(df):
            if vals[0] != "-":  # an unset variant column says nothing
                notes.append(f"{headers.get(c, c)} = {fmt(vals[0], decimals(c, vals))}")
            continue
        cols.append(c)
    rows = []
    for _, r in df.iterrows():
        row = []
        for c in cols:
            v = r[c]
            if isinstance(v, str) or c in ID_COLS:
                row.append("–" if is_missing(v) else str(v))
                continue
            places = decimals(c, df[c].tolist())
            cell = fmt(v, places)
            err = r.get(f"{c}_stderr") if stderr else None
            if not is_missing(v) and not is_missing(err):
                cell += f" ± {fmt(err, places)}"
            row.append(cell)
        rows.append(row)
    numeric = [not (c in ID_COLS or all(isinstance(v, str) or is_missing(v) for v in df[c].tolist())) for c in cols]
    if notes:
        notes = ["Same in every row: " + "; ".join(notes) + "."]
    return Table(name, [headers.get(c, c) for c in cols], rows, numeric, notes=notes)
