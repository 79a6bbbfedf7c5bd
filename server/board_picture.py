"""The leaderboard's picture: one self-contained HTML page (an SVG chart and a table, no script, no
network) that MLflow's UI shows as a run's artifact, and ``cohortfl leaderboard --format html``
prints.

Each submission is a row of the chart: its out-of-the-box macro-F1 (hollow) and its fine-tuned
macro-F1 (filled), each with its 95% bootstrap interval, joined by an arrow; then the gain, the
reported class's recall and the paired comparison with the row below ("noise" when its interval
holds 0). The table under it has the same numbers and the compute used. Every text on the page
comes from run tags and params a contributor chose (names, strategy classes), so all of it is
escaped.
"""

from __future__ import annotations

import html
import math
from datetime import UTC, datetime

from server.leaderboard import Row, recall_header, versus_next

#: The run that holds the picture in a board's experiment (one at a time; it has no scores).
PICTURE_TAG = "cohortfl.board_picture"
PICTURE_FILE = "leaderboard.html"
PICTURE_RUN_NAME = "leaderboard-picture"

_ROW, _TOP, _LABEL, _PLOT = 34, 46, 220, 320  # pixels: row height, header, label column, chart


def render(rows: list[Row], title: str = "cohortfl leaderboard", when: datetime | None = None) -> str:
    """The page for ``rows`` (best first, as ``read_leaderboard`` returns them)."""
    when = when or datetime.now(UTC)
    stamp = when.strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 16px; color: #1a1a1a; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }} p {{ margin: 4px 0 12px; color: #444; font-size: 13px; }}
table {{ border-collapse: collapse; font-size: 13px; margin-top: 12px; }}
th, td {{ padding: 3px 10px; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }}
th:nth-child(-n+3), td:nth-child(-n+3) {{ text-align: left; }}
.noise {{ color: #a15c00; font-weight: 600; }}
</style></head><body>
<h1>{_e(title)}</h1>
<p>{len(rows)} submission(s), as of {stamp}. Every score was computed by the foundation's node on its
holdout. Hollow: the submitted model out of the box; filled: after fine-tuning; bars: 95% bootstrap
intervals over the holdout's records. <span class="noise">noise</span>: the node's paired comparison
with the row below holds 0, so this board does not tell the two apart.</p>
{_chart(rows)}
{_table(rows)}
</body></html>
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _number(value: float, form: str = ".3f") -> str:
    return "-" if math.isnan(value) else format(value, form)


def _interval(value: float, interval: tuple[float, float]) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.3f} [{_number(interval[0], '.2f')}, {_number(interval[1], '.2f')}]"


def _chart(rows: list[Row]) -> str:
    """An SVG forest plot: macro-F1 on x, one submission a row, plus its key numbers."""
    if not rows:
        return "<p>(no finished submissions)</p>"
    values = [v for r in rows for v in (*r.out_of_the_box_ci95, *r.fine_tuned_ci95,
                                        r.out_of_the_box, r.fine_tuned) if not math.isnan(v)]
    low = max(0.0, math.floor(min(values, default=0.0) * 10) / 10)
    high = min(1.0, math.ceil(max(values, default=1.0) * 10) / 10)
    high = high if high > low else low + 0.1

    def x(value: float) -> float:
        return _LABEL + (value - low) / (high - low) * _PLOT

    width, height = _LABEL + _PLOT + 480, _TOP + _ROW * len(rows) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
             f'style="max-width: {width}px" '
             f'font-family="system-ui, sans-serif" font-size="13" role="img" '
             f'aria-label="macro-F1 out of the box and after fine-tuning, per submission">',
             '<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="7" refY="4" '
             'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#5b7db1"/></marker></defs>']
    columns = (("gain", 75), (recall_header(rows), 230), ("vs next (paired)", 470))  # right edges
    parts.append(f'<text x="{_LABEL}" y="16" font-weight="600">macro-F1 on the holdout</text>')
    for name, offset in columns:
        parts.append(f'<text x="{_LABEL + _PLOT + offset}" y="16" font-weight="600" '
                     f'text-anchor="end">{_e(name)}</text>')
    tick = low
    while tick <= high + 1e-9:
        parts.append(f'<line x1="{x(tick):.1f}" y1="{_TOP - 14}" x2="{x(tick):.1f}" '
                     f'y2="{height - 24}" stroke="#e4e4e4"/>'
                     f'<text x="{x(tick):.1f}" y="{height - 8}" text-anchor="middle" fill="#666">'
                     f'{tick:.1f}</text>')
        tick += 0.1
    for i, row in enumerate(rows):
        y = _TOP + i * _ROW
        label = f"{row.contributor} · {row.strategy} · {row.model}"
        parts.append(f'<text x="{_LABEL - 12}" y="{y + 4}" text-anchor="end">{_e(label)}</text>')
        if not (math.isnan(row.out_of_the_box) or math.isnan(row.fine_tuned)) and abs(row.gain) > 0.02:
            step = math.copysign(8, row.gain)  # from circle's edge to circle's edge
            parts.append(f'<line x1="{x(row.out_of_the_box) + step:.1f}" y1="{y}" '
                         f'x2="{x(row.fine_tuned) - step:.1f}" y2="{y}" stroke="#5b7db1" '
                         f'stroke-width="1.5" marker-end="url(#arrow)"/>')
        for value, (lo, hi), dy, colour, fill in (
                (row.out_of_the_box, row.out_of_the_box_ci95, -4, "#9a9a9a", "white"),
                (row.fine_tuned, row.fine_tuned_ci95, 4, "#1f4e99", "#1f4e99")):
            if math.isnan(value):
                continue
            if not (math.isnan(lo) or math.isnan(hi)):
                parts.append(f'<line x1="{x(lo):.1f}" y1="{y + dy}" x2="{x(hi):.1f}" y2="{y + dy}" '
                             f'stroke="{colour}" stroke-width="2"/>')
            parts.append(f'<circle cx="{x(value):.1f}" cy="{y}" r="5" fill="{fill}" '
                         f'stroke="{colour}" stroke-width="2"/>')
        paired = versus_next(rows, i)
        cells = (_number(row.gain, "+.3f"), _interval(row.reported_recall, row.reported_recall_ci95), paired)
        for (_, offset), cell in zip(columns, cells, strict=True):
            noise = ' fill="#a15c00" font-weight="600"' if cell.endswith("noise") else ""
            parts.append(f'<text x="{_LABEL + _PLOT + offset}" y="{y + 4}" text-anchor="end"{noise}>'
                         f'{_e(cell)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _table(rows: list[Row]) -> str:
    """The same numbers as text, for reading, copying and screen readers."""
    header = ("contributor", "strategy", "model", "out of the box", "after fine-tuning", "gain",
              recall_header(rows), "vs next (paired)", "compute (PF)", "budget used (PF)", "run")
    lines = ["<table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        paired = versus_next(rows, i)
        cells = (row.contributor, row.strategy, row.model,
                 _interval(row.out_of_the_box, row.out_of_the_box_ci95),
                 _interval(row.fine_tuned, row.fine_tuned_ci95), _number(row.gain, "+.3f"),
                 _interval(row.reported_recall, row.reported_recall_ci95), paired,
                 _number(row.compute_pf, ".3g"),
                 f"{_number(row.budget_used_pf, '.3g')} / {_number(row.budget_pf, 'g')}", row.run_id[:8])
        lines.append("<tr>" + "".join(
            f'<td class="noise">{_e(c)}</td>' if str(c).endswith("noise") else f"<td>{_e(c)}</td>"
            for c in cells) + "</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def log_picture(client, experiment_id: str, rows: list[Row], title: str) -> str:
    """Put the board's picture in ``experiment_id`` as the one run tagged ``PICTURE_TAG`` (the
    previous picture run is deleted); returns the new run's id. ``client``: an MlflowClient."""
    from server.leaderboard import every_run

    for old in every_run(client, [experiment_id], f"tags.`{PICTURE_TAG}` = 'true'"):
        client.delete_run(old.info.run_id)
    run = client.create_run(experiment_id, run_name=PICTURE_RUN_NAME, tags={
        PICTURE_TAG: "true",
        "mlflow.note.content": f"The board's picture: open `{PICTURE_FILE}` under Artifacts."})
    client.log_text(run.info.run_id, render(rows, title), PICTURE_FILE)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
