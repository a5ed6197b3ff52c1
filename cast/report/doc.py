"""The report document: an HTML page and its Markdown twin built side by side; every figure is also
saved as plots/{name}.png and every table as tables/{name}.html (a standalone page), the files the
Snakemake report registers, each with its caption (cast.report.captions)."""
from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

from .captions import caption
from .format import CSS, Table


class Doc:
    def __init__(self, out_dir: Path):
        self.out = Path(out_dir)
        self.html, self.md = [], []
        self.plots, self.tables = self.out / "plots", self.out / "tables"
        for d in (self.plots, self.tables):
            d.mkdir(parents=True, exist_ok=True)

    def h(self, level: int, text: str, anchor: str = ""):
        idattr = f" id='{html.escape(anchor)}'" if anchor else ""
        self.html.append(f"<h{level}{idattr}>{html.escape(text)}</h{level}>")
        self.md.append(f"{'#' * level} {text}\n")

    def p(self, text: str, cls: str = ""):
        self.html.append(f"<p class='{cls}'>{html.escape(text)}</p>")
        self.md.append(("> " if cls == "note" else "") + text + "\n")

    def bullets(self, items: list[str], cls: str = ""):
        self.html.append(f"<ul class='{cls}'>" + "".join(f"<li>{html.escape(t)}</li>" for t in items) + "</ul>")
        self.md.append("".join(f"- {t}\n" for t in items))

    def pre(self, text: str):
        self.html.append(f"<pre>{html.escape(text)}</pre>")
        self.md.append("```\n" + text.strip() + "\n```\n")

    def table(self, t: Table, title: str = "", show_caption: bool = True):
        """The table inline, plus tables/{name}.html for the Snakemake report."""
        cap = caption(t.name)
        if show_caption:
            self.html.append(f"<p class='caption'>{html.escape(cap)}</p>")
            self.md.append(f"*{cap}*\n")
        self.html.append(t.html())
        self.md.append(t.markdown())
        _atomic(self.tables / f"{t.name}.html", t.page(title or t.name, cap))

    def figure(self, fig, name: str):
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        (self.plots / f"{name}.png").write_bytes(buf.getvalue())
        b64 = base64.b64encode(buf.getvalue()).decode()
        cap = caption(name)
        self.html.append(f"<figure><img src='data:image/png;base64,{b64}' alt='{html.escape(name)}'>"
                         f"<figcaption>{html.escape(cap)}</figcaption></figure>")
        self.md.append(f"![{name}](plots/{name}.png)\n\n*{cap}*\n")

    def write(self, title: str) -> dict:
        page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{CSS}</style></head><body>\n" + "\n".join(self.html) + "\n</body></html>\n")
        _atomic(self.out / "index.html", page)
        _atomic(self.out / "report.md", "\n".join(self.md))
        return {"html": str(self.out / "index.html"), "markdown": str(self.out / "report.md"),
                "plots": sorted(p.name for p in self.plots.glob("*.png")),
                "tables": sorted(p.name for p in self.tables.glob("*.html"))}


def _atomic(path: Path, text: str) -> None:
    """Written under a temporary name, then renamed: a half-written page never looks complete."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
