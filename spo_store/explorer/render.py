"""Server-side rendering helpers: syntax highlighting (Pygments) and plots as inline SVG.

Nothing here runs in the browser: the explorer ships no JavaScript, so its pages work offline
and its Content-Security-Policy can forbid scripts outright.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import TextLexer, get_lexer_by_name
from pygments.util import ClassNotFound

# trajectories.language values (CodeContests / TACO names) -> Pygments lexer names
LEXERS = {
    "python3": "python",
    "python": "python",
    "python2": "python2",
    "cpp": "cpp",
    "c++": "cpp",
    "java": "java",
    "c": "c",
}
FORMATTER = HtmlFormatter(linenos="table", cssclass="hl", wrapcode=True)


# Characters that change how the text around them looks without showing themselves: C0/C1
# controls (but tab, newline, carriage return) and the bidirectional marks, embeddings,
# overrides and isolates ("Trojan Source": a response whose displayed order differs from the
# order the judge ran), and the byte order mark.
HIDDEN = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]"
)
# a tag, or an element whose text is not markup (a span in a <title> would show as text)
_TAG_OR_TEXTAREA = re.compile(r"(<textarea\b[^>]*>.*?</textarea>|<title>.*?</title>|<[^>]*>)", re.S)


def _code_point(ch: str) -> str:
    return f"U+{ord(ch):04X}"


def show_hidden(html: str) -> str:
    """`html` (a rendered page) with every HIDDEN character shown as its code point: in text
    as a marked span titled with its name, inside a tag (an attribute value) or the title as
    plain text; a textarea (the SQL box) keeps its text as typed. Sound because every lake text was
    escaped first, so `<` and `>` in the page are markup only."""
    if HIDDEN.search(html) is None:
        return html

    def in_text(m: re.Match[str]) -> str:
        ch = m.group(0)
        name = unicodedata.name(ch, "control character")
        return (
            f'<span class="hidden-char" title="{_code_point(ch)} {name}">{_code_point(ch)}</span>'
        )

    parts = _TAG_OR_TEXTAREA.split(html)
    for i, part in enumerate(parts):
        if i % 2 == 0:  # text between tags
            parts[i] = HIDDEN.sub(in_text, part)
        elif not part.startswith("<textarea"):
            parts[i] = HIDDEN.sub(lambda m: f"&lt;{_code_point(m.group(0))}&gt;", part)
    return "".join(parts)


def pygments_css() -> str:
    return FORMATTER.get_style_defs(".hl")


def highlight_code(text: str | None, language: str | None) -> Markup:
    """`text` as highlighted HTML (Pygments escapes every character of it)."""
    try:
        lexer = get_lexer_by_name(LEXERS.get((language or "").lower(), language or "text"))
    except ClassNotFound:
        lexer = TextLexer()
    return Markup(highlight(text or "", lexer, FORMATTER))


def plot(
    series: Sequence[tuple[float, float]],
    *,
    width: int = 320,
    height: int = 120,
    pad: int = 28,
    xlabel: str = "step",
) -> dict[str, Any]:
    """Geometry of a line plot of `(x, y)` points for the `svg_plot` template macro: the
    polyline's points, axis ranges and tick labels (numbers only; the template escapes
    labels). Non-finite y values are dropped."""
    pts = [(float(x), float(y)) for x, y in series if math.isfinite(y)]
    if not pts:
        return {"points": "", "dots": [], "width": width, "height": height, "empty": True}
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - abs(y0) * 0.1 - 1e-9, y1 + abs(y1) * 0.1 + 1e-9

    def sx(x: float) -> float:
        return pad + (x - x0) / (x1 - x0) * (width - pad - 8)

    def sy(y: float) -> float:
        return height - pad + 8 - (y - y0) / (y1 - y0) * (height - pad)

    coords = [(round(sx(x), 1), round(sy(y), 1)) for x, y in pts]
    return {
        "points": " ".join(f"{a},{b}" for a, b in coords),
        "dots": coords if len(coords) <= 60 else [],
        "width": width,
        "height": height,
        "pad": pad,
        "xmin": _fmt(min(xs)),
        "xmax": _fmt(max(xs)),
        "ymin": _fmt(min(ys)),
        "ymax": _fmt(max(ys)),
        "last": _fmt(ys[-1]),
        "n": len(pts),
        "xlabel": xlabel,
        "empty": False,
    }


def _fmt(v: float) -> str:
    if v == int(v) and abs(v) < 1e9:
        return str(int(v))
    return f"{v:.4g}"
