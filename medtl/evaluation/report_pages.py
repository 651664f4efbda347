"""Report blocks rendered as Markdown and as one self-contained HTML page."""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from medtl.evaluation.formatting import num

RUN_ID_COLUMNS = ("best run", "run_id", "kept_run_id")
"""Table columns whose cells are run ids (links to the MLflow UI when its address is known)."""
Block = tuple[Any, ...]
"""One piece of a report: ("h", level, text), ("p", text), ("table", DataFrame) or ("img", file name)."""


def to_markdown(blocks: Sequence[Block], link: Callable[[str], str] | None = None) -> str:
    """Render blocks as Markdown; figures link to plots/<name>, run ids to `link(run_id)` if given."""
    lines: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            lines += ["#" * block[1] + " " + block[2], ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "img":
            lines += [f"![{block[1]}](plots/{block[1]})", ""]
        elif kind == "table":
            frame: pd.DataFrame = block[1]
            if frame.empty:
                lines += ["(none)", ""]
                continue
            cell = lambda v: num(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
            runs = [c in RUN_ID_COLUMNS for c in frame.columns]

            def shown(v: Any, is_run: bool, cell: Callable[[Any], str] = cell) -> str:
                text = cell(v)
                return f"[{text}]({link(text)})" if link and is_run and text != "–" else text

            lines.append("| " + " | ".join(map(str, frame.columns)) + " |")
            lines.append("|" + "---|" * len(frame.columns))
            lines += ["| " + " | ".join(shown(v, r) for v, r in zip(row, runs, strict=True)) + " |"
                      for row in frame.itertuples(index=False)]
            lines.append("")
    return "\n".join(lines)


_CSS = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;font-size:12px;margin-bottom:1em}"
    "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}th{background:#f3f3f3}"
    "img{max-width:100%;display:block;margin:1em 0}"
)


def to_html(
    blocks: Sequence[Block], figures: dict[str, bytes], title: str, link: Callable[[str], str] | None = None
) -> str:
    """Render blocks as one self-contained HTML page (figures as base64 PNG data URIs).

    Run ids in RUN_ID_COLUMNS link to `link(run_id)` (the MLflow UI) when given.
    """
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<style>{_CSS}</style></head><body>"]
    for block in blocks:
        kind = block[0]
        if kind == "h":
            parts.append(f"<h{block[1]}>{esc(block[2])}</h{block[1]}>")
        elif kind == "p":
            parts.append(f"<p>{esc(block[1])}</p>")
        elif kind == "img":
            data = base64.b64encode(figures[block[1]]).decode()
            parts.append(f"<img alt='{esc(block[1])}' src='data:image/png;base64,{data}'>")
        elif kind == "table":
            frame = block[1]
            if frame.empty:
                parts.append("<p>(none)</p>")
                continue
            head = "".join(f"<th>{esc(str(c))}</th>" for c in frame.columns)
            runs = [c in RUN_ID_COLUMNS for c in frame.columns]

            def td(v: Any, is_run: bool) -> str:
                text = num(v)
                if link and is_run and text != "–":
                    return f"<td><a href='{esc(link(text))}'>{esc(text)}</a></td>"
                return f"<td>{esc(text)}</td>"

            body = "".join(
                "<tr>" + "".join(td(v, r) for v, r in zip(row, runs, strict=True)) + "</tr>"
                for row in frame.itertuples(index=False)
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts)
