"""The EDA's figures, drawn from its tables' published text only (inline SVG, no script).

A figure shows nothing its table does not: counts shown as ``<k`` are drawn as an outlined box of
one fixed height labelled ``<k`` (a height proportional to the hidden count would publish it),
a withheld statistic (``-``) is left out, and every number drawn is parsed from the table's cell.
"""

from __future__ import annotations

import html
import re

from client.eda import Report, Table

WIDTH, BAR_HEIGHT, ROW = 560, 160, 18
_MEAN_SD = re.compile(r"^([+-]?[\d.eE+-]+) \(([\d.eE+-]+)\)$")
_PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2")


def figures(report: Report) -> dict[str, str]:
    """SVG figures keyed by the title of the table they draw."""
    drawn = {}
    for table in report.tables:
        svg = _draw(table)
        if svg:
            drawn[table.title] = svg
    return drawn


def standalone(svg: str) -> str:
    """An inline figure as an SVG file of its own (its namespace declared)."""
    return svg.replace("<svg ", "<svg xmlns='http://www.w3.org/2000/svg' ", 1)


def _draw(table: Table) -> str | None:
    """A figure for the tables that have one."""
    if table.title.startswith("Class balance"):
        return _bars([row[0] for row in table.rows], [row[1] for row in table.rows], "records")
    if table.title.startswith("Missing cells by class") and table.rows and table.rows[0][0][0] != "(":
        classes = table.columns[1:]
        return _grouped_bars([row[0] for row in table.rows], classes,
                             [list(row[1:]) for row in table.rows], "missing cells")
    if table.title.startswith("Numeric groups by class"):
        return _whiskers([row[0] for row in table.rows], table.columns[2:],
                         [list(row[2:]) for row in table.rows])
    return None


def _count(text: str) -> float | None:
    """A published count, or None for a suppressed one."""
    return None if text.startswith("<") or text in ("", "-") else float(text)


def _svg(height: int, body: list[str], label: str) -> str:
    return (f"<svg width='{WIDTH}' height='{height}' role='img' "
            f"aria-label='{html.escape(label)}' font-family='system-ui,sans-serif' font-size='11'>"
            + "".join(body) + "</svg>")


def _bars(names: list[str], cells: list[str], unit: str) -> str:
    """One bar per name; a suppressed cell an outlined box of fixed height."""
    shown = [c for c in map(_count, cells) if c is not None]
    top = max(shown, default=1.0) or 1.0
    slot = (WIDTH - 40) / max(len(names), 1)
    body = []
    for i, (name, cell) in enumerate(zip(names, cells, strict=True)):
        x, value = 30 + i * slot, _count(cell)
        h = 24.0 if value is None else BAR_HEIGHT * value / top
        style = ("fill='none' stroke='#999' stroke-dasharray='3,2' data-suppressed='1'" if value is None
                 else f"fill='{_PALETTE[0]}'")
        body.append(f"<rect x='{x + 4:.1f}' y='{20 + BAR_HEIGHT - h:.1f}' width='{slot - 8:.1f}' "
                    f"height='{h:.1f}' {style}/>")
        body.append(f"<text x='{x + slot / 2:.1f}' y='{14 + BAR_HEIGHT - h:.1f}' text-anchor='middle'>"
                    f"{html.escape(cell)}</text>")
        body.append(f"<text x='{x + slot / 2:.1f}' y='{BAR_HEIGHT + 36}' text-anchor='middle'>"
                    f"{html.escape(name)}</text>")
    return _svg(BAR_HEIGHT + 48, body, f"{unit} by class")


def _grouped_bars(names: list[str], classes: tuple[str, ...], cells: list[list[str]], unit: str) -> str:
    """A row of bars per name (one per class); suppressed cells labelled, not drawn."""
    shown = [v for row in cells for v in map(_count, row) if v is not None]
    top = max(shown, default=1.0) or 1.0
    body, label_width = [], 150
    for i, (name, row) in enumerate(zip(names, cells, strict=True)):
        y0 = 10 + i * (len(classes) * ROW + 8)
        body.append(f"<text x='0' y='{y0 + ROW}'>{html.escape(name[:24])}</text>")
        for j, cell in enumerate(row):
            y, value = y0 + j * ROW, _count(cell)
            width = 0.0 if value is None else (WIDTH - label_width - 60) * value / top
            if value is not None:
                body.append(f"<rect x='{label_width}' y='{y + 3}' width='{width:.1f}' height='{ROW - 5}' "
                            f"fill='{_PALETTE[j % len(_PALETTE)]}'/>")
            body.append(f"<text x='{label_width + width + 4:.1f}' y='{y + ROW - 4}'>"
                        f"{html.escape(classes[j])}: {html.escape(cell)}</text>")
    height = 20 + len(names) * (len(classes) * ROW + 8)
    return _svg(height, body, f"{unit} by class")


def _whiskers(names: list[str], classes: tuple[str, ...], cells: list[list[str]]) -> str:
    """Per group and class, the published mean as a dot and +-1 sd as a line; withheld ones left out."""
    parsed = [[_MEAN_SD.match(c) for c in row] for row in cells]
    values = [float(m.group(1)) + s * float(m.group(2)) for row in parsed for m in row if m for s in (-1, 1)]
    low, high = min(values, default=-1.0), max(values, default=1.0)
    span = (high - low) or 1.0
    label_width, plot = 150, WIDTH - 150 - 20

    def x(v: float) -> float:
        return label_width + plot * (v - low) / span

    body = [f"<line x1='{x(0):.1f}' y1='0' x2='{x(0):.1f}' y2='{20 + len(names) * len(classes) * ROW}' "
            "stroke='#ccc'/>"] if low <= 0 <= high else []
    for i, (name, row) in enumerate(zip(names, parsed, strict=True)):
        y0 = 10 + i * len(classes) * ROW
        body.append(f"<text x='0' y='{y0 + ROW}'>{html.escape(name[:24])}</text>")
        for j, m in enumerate(row):
            if not m:
                continue
            y, mean, sd = y0 + j * ROW + ROW / 2, float(m.group(1)), float(m.group(2))
            colour = _PALETTE[j % len(_PALETTE)]
            body.append(f"<line x1='{x(mean - sd):.1f}' y1='{y:.1f}' x2='{x(mean + sd):.1f}' y2='{y:.1f}' "
                        f"stroke='{colour}'/><circle cx='{x(mean):.1f}' cy='{y:.1f}' r='3.5' fill='{colour}'>"
                        f"<title>{html.escape(classes[j])}: {html.escape(m.group(0))}</title></circle>")
    legend = "".join(f"<text x='{label_width + 90 * j}' y='{24 + len(names) * len(classes) * ROW}' "
                     f"fill='{_PALETTE[j % len(_PALETTE)]}'>{html.escape(c)}</text>"
                     for j, c in enumerate(classes))
    return _svg(34 + len(names) * len(classes) * ROW, [*body, legend], "group means by class")
