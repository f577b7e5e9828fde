"""Building blocks of the self-contained HTML report: escaping, tables, embedded images.

Every image is a base64 data URI and the CSS is inline, so the page needs no other file
and loads nothing from the network.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from species_classifier.data.images import ImageLoadError, load_image

log = logging.getLogger(__name__)

STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0;
       background: #f4f5f7; color: #1f2328; }
main { max-width: 1150px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 15px; margin: 18px 0 8px; }
p.sub, .note { color: #57606a; font-size: 13px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 18px 0; }
.card { background: white; border: 1px solid #d0d7de; border-radius: 8px; padding: 12px 16px; min-width: 140px; }
.card .value { font-size: 24px; font-weight: 600; }
.card .label { font-size: 12px; color: #57606a; }
.card.headline { border-color: #1f6feb; min-width: 240px; }
.card.headline .value { font-size: 34px; color: #1f6feb; }
table { border-collapse: collapse; background: white; font-size: 13px; margin: 6px 0 10px; }
th, td { border: 1px solid #d0d7de; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.target td:first-child { font-weight: 600; }
td.bad { background: #ffebe9; }
td.good { background: #dafbe1; }
img.plot { max-width: 100%; background: white; border: 1px solid #d0d7de; border-radius: 6px; }
.mistakes { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px; }
.mistake { background: white; border: 1px solid #d0d7de; border-radius: 6px; padding: 6px; font-size: 12px; }
.mistake img { width: 100%; height: 150px; object-fit: cover; border-radius: 4px; display: block; }
.mistake .true { color: #1a7f37; }
.mistake .pred { color: #cf222e; font-weight: 600; }
.mistake .meta { color: #57606a; word-break: break-all; }
details { margin: 8px 0; }
summary { cursor: pointer; color: #0969da; }
code { font-size: 12px; background: #eaeef2; padding: 1px 4px; border-radius: 4px; }
"""


def escape(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_number(value: Any, digits: int = 3) -> str:
    if is_missing(value):
        return "n/a"
    return f"{float(value):.{digits}f}"


def format_percent(value: Any, digits: int = 1) -> str:
    if is_missing(value):
        return "n/a"
    return f"{100 * float(value):.{digits}f}%"


def png_image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="plot" alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def thumbnail_data_uri(path: str | Path, size: int = 200, quality: int = 80) -> str | None:
    """Return a small JPEG of the image as a data URI, or None when the file cannot be read."""
    try:
        image = load_image(path, draft_size=size)
    except ImageLoadError as error:
        log.debug("No thumbnail for %s: %s", path, error.reason)
        return None
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def card(value: str, label: str, headline: bool = False) -> str:
    kind = "card headline" if headline else "card"
    return f'<div class="{kind}"><div class="value">{value}</div><div class="label">{label}</div></div>'


Formatter = Callable[[Any], str]


def html_table(
    frame: pd.DataFrame,
    formats: Mapping[str, Formatter] | None = None,
    headers: Mapping[str, str] | None = None,
    max_rows: int | None = None,
    row_classes: Sequence[str] | None = None,
    cell_classes: Callable[[str, Any], str] | None = None,
    show_header: bool = True,
) -> str:
    """Render a DataFrame as an HTML table; values are escaped unless a formatter returns HTML.

    Formatters in `formats` return HTML and must escape text themselves. Columns without a
    formatter are escaped, and numbers are right-aligned. `cell_classes(column, value)`
    returns extra CSS classes for a cell.
    """
    formats = formats or {}
    headers = headers or {}
    shown = frame if max_rows is None else frame.head(max_rows)
    head = ""
    if show_header:
        cells = "".join(f"<th>{escape(headers.get(column, column))}</th>" for column in frame.columns)
        head = f"<thead><tr>{cells}</tr></thead>"
    body = []
    # Records keep each column's own type; iterrows would turn an int column into floats
    # in a row that also has a float column.
    for position, row in enumerate(shown.to_dict(orient="records")):
        cells = []
        for column in frame.columns:
            value = row[column]
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if column in formats:
                text = formats[column](value)
            elif is_missing(value):
                text = ""
            else:
                text = escape(value)
            classes = ["num"] if numeric else []
            if cell_classes:
                extra = cell_classes(column, value)
                if extra:
                    classes.append(extra)
            attribute = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attribute}>{text}</td>")
        row_class = f' class="{row_classes[position]}"' if row_classes and row_classes[position] else ""
        body.append(f"<tr{row_class}>{''.join(cells)}</tr>")
    note = ""
    if max_rows is not None and len(frame) > max_rows:
        note = f'<p class="note">Showing {max_rows} of {len(frame)} rows.</p>'
    return f"<table>{head}<tbody>{''.join(body)}</tbody></table>{note}"


def html_page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body><main>\n{body}\n</main></body>\n</html>\n"
    )
