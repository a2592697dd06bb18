"""Small inline SVG charts for the HTML reports: no JavaScript, no fonts or files to fetch.

Every function returns one `<svg>` element as text (valid XML, labels escaped), sized in CSS
pixels, with a `<title>` that says what it shows. Colours: ok green, warning amber, critical red.
"""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import escape

from opskit.checks.levels import level_of

COLOURS = {
    "ok": "#2e7d32",
    "warning": "#e69500",
    "critical": "#c62828",
    "unknown": "#757575",
    "bar": "#4a78b5",
    "error": "#c62828",
    "line": "#4a78b5",
}
FONT = 'font-family="sans-serif" font-size="10"'


def _num(v: float) -> str:
    """A number as a person reads it on a chart: no needless decimals.

    >>> _num(3.0), _num(2.456), _num(1234.5)
    ('3', '2.46', '1234')
    """
    if abs(v - round(v)) < 1e-9 or abs(v) >= 100:
        return str(round(v))
    return f"{v:.2f}".rstrip("0").rstrip(".")


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img">'
        f"<title>{escape(title)}</title>" + "".join(body) + "</svg>"
    )


def _empty(width: int, height: int, title: str, text: str) -> str:
    return _svg(
        width,
        height,
        title,
        [
            f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" fill="#fafafa" '
            'stroke="#ddd"/>',
            f'<text x="{width / 2:.1f}" y="{height / 2 + 3:.1f}" text-anchor="middle" {FONT} '
            f'fill="#777">{escape(text)}</text>',
        ],
    )


def _threshold(y: float, x0: float, x1: float, level: str, label: str) -> list[str]:
    colour = COLOURS[level]
    return [
        f'<line x1="{x0:.1f}" y1="{y:.1f}" x2="{x1:.1f}" y2="{y:.1f}" stroke="{colour}" '
        'stroke-dasharray="4 3" stroke-width="1"/>',
        f'<text x="{x1 - 2:.1f}" y="{y - 2:.1f}" text-anchor="end" {FONT} fill="{colour}">'
        f"{escape(label)}</text>",
    ]


def sparkline(
    values: Sequence[float],
    *,
    title: str,
    unit: str = "",
    warning: float | None = None,
    critical: float | None = None,
    width: int = 260,
    height: int = 60,
) -> str:
    """The samples as a line with a dot each, threshold lines, and min / max / last labels."""
    if not values:
        return _empty(width, height, title, "no samples")
    pad_l, pad_r, pad_t, pad_b = 4, 4, 12, 12
    top = max([*values, *(t for t in (warning, critical) if t is not None and t < 3 * max(values))])
    top = top * 1.1 or 1.0
    span_w = width - pad_l - pad_r
    span_h = height - pad_t - pad_b

    def x(i: int) -> float:
        return pad_l + (span_w * i / (len(values) - 1) if len(values) > 1 else span_w / 2)

    def y(v: float) -> float:
        return pad_t + span_h * (1 - min(v, top) / top)

    body = [
        f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" fill="#fff" '
        'stroke="#ddd"/>'
    ]
    for t, lvl in ((warning, "warning"), (critical, "critical")):
        if t is not None and t <= top:
            body += _threshold(y(t), pad_l, width - pad_r, lvl, f"{lvl} {_num(t)}{unit}")
    points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
    body.append(
        f'<polyline points="{points}" fill="none" stroke="{COLOURS["line"]}" stroke-width="1.5"/>'
    )
    for i, v in enumerate(values):
        colour = COLOURS[level_of(v, warning, critical)]
        body.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2" fill="{colour}"/>')
    label = (
        f"min {_num(min(values))}{unit} · max {_num(max(values))}{unit} · "
        f"last {_num(values[-1])}{unit} · n={len(values)}"
    )
    body.append(f'<text x="{pad_l}" y="{height - 2}" {FONT} fill="#333">{escape(label)}</text>')
    return _svg(width, height, title, body)


def gauge_bars(
    items: Sequence[tuple[str, float | None, float | None, float | None]],
    *,
    title: str,
    unit: str = "%",
    maximum: float = 100.0,
    width: int = 320,
) -> str:
    """One horizontal bar per (label, value, warning, critical), with the thresholds marked."""
    if not items:
        return _empty(width, 30, title, "no values")
    row, label_w, pad = 20, 90, 4
    height = row * len(items) + 2 * pad
    span = width - label_w - 50
    body = [
        f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" fill="#fff" '
        'stroke="#ddd"/>'
    ]
    for i, (label, value, warning, critical) in enumerate(items):
        y0 = pad + i * row
        body.append(f'<text x="{pad}" y="{y0 + 14}" {FONT} fill="#333">{escape(label[:16])}</text>')
        body.append(
            f'<rect x="{label_w}" y="{y0 + 4}" width="{span}" height="{row - 8}" fill="#eee"/>'
        )
        if value is not None:
            w = span * max(0.0, min(value, maximum)) / maximum
            colour = COLOURS[level_of(value, warning, critical)]
            body.append(
                f'<rect x="{label_w}" y="{y0 + 4}" width="{w:.1f}" height="{row - 8}" '
                f'fill="{colour}"/>'
            )
        for t, lvl in ((warning, "warning"), (critical, "critical")):
            if t is not None and 0 <= t <= maximum:
                tx = label_w + span * t / maximum
                body.append(
                    f'<line x1="{tx:.1f}" y1="{y0 + 1}" x2="{tx:.1f}" y2="{y0 + row - 1}" '
                    f'stroke="{COLOURS[lvl]}" stroke-dasharray="3 2" stroke-width="1.5"/>'
                )
        text = "n/a" if value is None else f"{_num(value)}{unit}"
        body.append(
            f'<text x="{label_w + span + 6}" y="{y0 + 14}" {FONT} fill="#333">{escape(text)}</text>'
        )
    return _svg(width, height, title, body)


def columns(
    buckets: Sequence[tuple[str, float, float]],
    *,
    title: str,
    first: str = "requests",
    second: str = "5xx",
    width: int = 520,
    height: int = 120,
    label_every: int = 1,
) -> str:
    """Vertical bars per bucket (label, total, part): the total in blue, the part (e.g. 5xx)
    in red at its foot, a legend and the largest total on the axis."""
    if not buckets or not any(b[1] for b in buckets):
        return _empty(width, height, title, f"no {first} in the window")
    pad_l, pad_r, pad_t, pad_b = 30, 4, 14, 16
    top = max(b[1] for b in buckets) or 1.0
    span_w = width - pad_l - pad_r
    span_h = height - pad_t - pad_b
    step = span_w / len(buckets)
    bw = max(1.0, step * 0.8)
    body = [
        f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" fill="#fff" '
        'stroke="#ddd"/>',
        f'<text x="{pad_l - 3}" y="{pad_t + 8}" text-anchor="end" {FONT} fill="#333">'
        f"{escape(_num(top))}</text>",
        f'<text x="{pad_l - 3}" y="{pad_t + span_h}" text-anchor="end" {FONT} fill="#333">0</text>',
        f'<line x1="{pad_l}" y1="{pad_t + span_h}" x2="{width - pad_r}" y2="{pad_t + span_h}" '
        'stroke="#999"/>',
    ]
    for i, (label, total, part) in enumerate(buckets):
        x0 = pad_l + i * step + (step - bw) / 2
        h = span_h * total / top
        body.append(
            f'<rect x="{x0:.1f}" y="{pad_t + span_h - h:.1f}" width="{bw:.1f}" height="{h:.1f}" '
            f'fill="{COLOURS["bar"]}"><title>{escape(f"{label}: {_num(total)} {first}")}'
            "</title></rect>"
        )
        if part:
            hp = max(1.0, span_h * part / top)
            body.append(
                f'<rect x="{x0:.1f}" y="{pad_t + span_h - hp:.1f}" width="{bw:.1f}" '
                f'height="{hp:.1f}" fill="{COLOURS["error"]}"><title>'
                f"{escape(f'{label}: {_num(part)} {second}')}</title></rect>"
            )
        if i % max(1, label_every) == 0:
            body.append(
                f'<text x="{x0 + bw / 2:.1f}" y="{height - 4}" text-anchor="middle" {FONT} '
                f'fill="#555">{escape(label)}</text>'
            )
    body.append(
        f'<text x="{width - pad_r - 2}" y="11" text-anchor="end" {FONT} fill="#333">'
        f'<tspan fill="{COLOURS["bar"]}">■</tspan> {escape(first)} '
        f'<tspan fill="{COLOURS["error"]}">■</tspan> {escape(second)}</text>'
    )
    return _svg(width, height, title, body)
