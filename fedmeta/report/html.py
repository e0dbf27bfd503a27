"""A self-contained HTML page: inline style, figures embedded as PNG data, no script and nothing
fetched, so that it opens offline and can be mailed or archived as one file."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

__all__ = ["page", "table", "facts", "figure", "png", "paragraph", "fmt"]

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 60em;
       color: #1d2430; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; border-bottom: 2px solid #2f6db5; padding-bottom: .2em; }
h2 { font-size: 1.2em; margin-top: 1.8em; color: #2f6db5; }
table { border-collapse: collapse; margin: .6em 0; font-size: .92em; }
th, td { border: 1px solid #c9d1dc; padding: .25em .6em; text-align: right; }
th { background: #eef2f7; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #e3e7ee; margin: .4em 0; }
table.facts td, table.facts th { text-align: left; }
.note { color: #4b5565; font-size: .92em; }
.ok { color: #17683a; font-weight: 600; } .warn { color: #a23a12; font-weight: 600; }
"""


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats rounded, NaN as a dash."""
    if isinstance(value, float):
        return "–" if value != value else f"{value:.{digits}f}"
    return str(value)


def table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def facts(rows: list[tuple[str, Any]]) -> str:
    """A two-column table of labelled facts, without a header."""
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(fmt(v))}</td></tr>" for k, v in rows)
    return f'<table class="facts"><tbody>{body}</tbody></table>'


def paragraph(text: str, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f"<p{cls}>{html.escape(text)}</p>"


def figure(fig: Any, alt: str) -> str:
    """A matplotlib figure as an embedded PNG (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return png(buf.getvalue(), alt)


def png(data: bytes, alt: str) -> str:
    """PNG bytes as an embedded image."""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def page(title: str, sections: list[tuple[str, str]]) -> str:
    """The page: a title, then each (heading, HTML body) section."""
    parts = [f"<h2>{html.escape(h)}</h2>\n{body}" for h, body in sections]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1>\n" + "\n".join(parts)
            + "\n</body></html>\n")
