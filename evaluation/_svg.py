"""Tiny inline-SVG charts for the HTML report: grouped bars and a heatmap. No plotting dependency,
no network, a few kilobytes per chart, and text that stays crisp in a browser and a screenshot."""

from __future__ import annotations

from html import escape

REAL = "#1f77b4"
SYNTH = "#ff7f0e"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def bars(
    labels: list[str],
    series: list[tuple[str, list[float | None], str]],
    *,
    title: str,
    width: int = 360,
    height: int = 200,
    y_max: float | None = None,
    rule: tuple[float, str] | None = None,
    show_values: bool = False,
    rotate_labels: bool | None = None,
) -> str:
    """Grouped vertical bars: one group per label, one bar per series (name, values, colour).

    ``rule`` draws a dashed horizontal line (value, caption), e.g. a policy threshold.
    """
    n = max(1, len(labels))
    rotate = rotate_labels if rotate_labels is not None else (n > 6 or max((len(s) for s in labels), default=0) > 8)
    left, right, top, bottom = 40, 8, 34, (58 if rotate else 30)
    pw, ph = width - left - right, height - top - bottom
    vals = [v for _, vs, _ in series for v in vs if v is not None]
    top_v = y_max if y_max is not None else max(vals + [rule[0] if rule else 0.0, 1e-9]) * 1.1
    gw = pw / n
    bw = max(1.0, gw * 0.8 / max(1, len(series)))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" class="chart">',
           f'<title>{escape(title)}</title>',
           f'<text x="{width / 2}" y="14" text-anchor="middle" class="t">{escape(title)}</text>']
    for i in range(5):  # grid and y axis labels
        y = top + ph - ph * i / 4
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{left - 4}" y="{y + 3:.1f}" text-anchor="end" class="a">{_fmt(top_v * i / 4)}</text>')
    for gi, label in enumerate(labels):
        x0 = left + gi * gw + gw * 0.1
        for si, (name, vs, colour) in enumerate(series):
            v = vs[gi] if gi < len(vs) else None
            if v is None:
                continue
            h = ph * min(max(v, 0.0), top_v) / top_v
            x = x0 + si * bw
            out.append(f'<rect x="{x:.1f}" y="{top + ph - h:.1f}" width="{bw:.1f}" height="{h:.1f}" '
                       f'fill="{colour}"><title>{escape(name)} {escape(label)}: {_fmt(v)}</title></rect>')
            if show_values:
                out.append(f'<text x="{x + bw / 2:.1f}" y="{top + ph - h - 3:.1f}" text-anchor="middle" '
                           f'class="a">{_fmt(v)}</text>')
        cx = left + gi * gw + gw / 2
        text = escape(label if len(label) <= 12 else label[:11] + "…")
        if rotate:
            out.append(f'<text transform="translate({cx:.1f},{top + ph + 8}) rotate(40)" class="a">{text}</text>')
        else:
            out.append(f'<text x="{cx:.1f}" y="{top + ph + 14}" text-anchor="middle" class="a">{text}</text>')
    if rule is not None:
        y = top + ph - ph * min(rule[0], top_v) / top_v
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" class="rule"/>')
        out.append(f'<text x="{left + pw}" y="{y - 3:.1f}" text-anchor="end" class="a">{escape(rule[1])}</text>')
    lx = left
    for name, _, colour in series:  # legend
        out.append(f'<rect x="{lx}" y="20" width="9" height="9" fill="{colour}"/>')
        out.append(f'<text x="{lx + 12}" y="28" class="a">{escape(name)}</text>')
        lx += 18 + 6 * len(name)
    out.append("</svg>")
    return "".join(out)


def _heat_colour(v: float) -> str:
    """0 -> white, 1 -> dark red (difference scale)."""
    v = min(max(v, 0.0), 1.0)
    r = int(255 - 75 * v)
    g = int(255 - 230 * v)
    b = int(255 - 225 * v)
    return f"rgb({r},{g},{b})"


def heatmap(names: list[str], values: dict[tuple[str, str], float], *, title: str, cell: int = 22,
            vmax: float = 1.0) -> str:
    """Symmetric matrix of values in [0, vmax] (larger saturate); pairs absent from ``values`` are grey."""
    n = len(names)
    left = top = 92
    size = left + n * cell + 50
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{top + n * cell + 10}" '
           f'role="img" class="chart"><title>{escape(title)}</title>',
           f'<text x="4" y="14" class="t">{escape(title)}</text>']
    for i, a in enumerate(names):
        short = escape(a if len(a) <= 12 else a[:11] + "…")
        out.append(f'<text x="{left - 4}" y="{top + i * cell + cell * 0.65:.1f}" text-anchor="end" class="a">{short}</text>')
        out.append(f'<text transform="translate({left + i * cell + cell * 0.6:.1f},{top - 4}) rotate(-60)" '
                   f'class="a">{short}</text>')
        for j, b in enumerate(names):
            v = 0.0 if i == j else values.get((a, b), values.get((b, a)))
            fill = "#dddddd" if v is None else _heat_colour(v / vmax)
            tip = f"{a} × {b}: " + ("n/a" if v is None else _fmt(v))
            out.append(f'<rect x="{left + j * cell}" y="{top + i * cell}" width="{cell - 1}" height="{cell - 1}" '
                       f'fill="{fill}"><title>{escape(tip)}</title></rect>')
    x = left + n * cell + 12
    for k in range(11):  # colour scale
        out.append(f'<rect x="{x}" y="{top + (10 - k) * cell * n / 11:.1f}" width="12" height="{cell * n / 11 + 1:.1f}" '
                   f'fill="{_heat_colour(k / 10)}"/>')
    out.append(f'<text x="{x + 14}" y="{top + 8}" class="a">{"≥" if vmax < 1 else ""}{vmax:g}</text>')
    out.append(f'<text x="{x + 14}" y="{top + n * cell}" class="a">0</text>')
    out.append("</svg>")
    return "".join(out)
