"""Server-rendered SVG charts for the Benchmarks page: bars per version with 95 % CI whiskers.

Why SVG from the server: the page must show pictures without JavaScript (every studio page works
without it), and a few dozen rectangles need no charting library. Pure Python: no Django models.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from html import escape
from typing import Any

from django.utils.safestring import SafeString, mark_safe

PANEL_W, PANEL_H, PAD_TOP, PAD_BOTTOM, PAD_LEFT = 210, 170, 26, 34, 34
PROMOTED, OTHER = "#2f6f4f", "#5b7fb8"


def _fmt(v: float) -> str:
    """Three decimals rounded half up, as the table's ``floatformat:3`` shows them (large numbers: whole)."""
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return str(Decimal(repr(v)).quantize(Decimal("0.001"), rounding=ROUND_HALF_UP))


def _panel(metric: str, bars: list[dict[str, Any]], x0: int) -> list[str]:
    """One metric: a bar per version (value), a whisker per interval, the axis range at the left."""
    vals = [b["value"] for b in bars] + [b[k] for b in bars for k in ("ci_low", "ci_high") if b.get(k) is not None]
    lo, hi = min(0.0, *vals), max(vals)
    if lo >= 0.0 and hi <= 1.0:
        hi = 1.0  # proportions share one 0–1 scale, so versions and suites read alike
    hi = hi if hi > lo else lo + 1.0
    plot_h = PANEL_H - PAD_TOP - PAD_BOTTOM

    def y(v: float) -> float:
        return PAD_TOP + plot_h * (1 - (v - lo) / (hi - lo))

    out = [f'<g class="panel" data-metric="{escape(metric)}" transform="translate({x0},0)">',
           f'<text x="{PANEL_W / 2:.0f}" y="14" text-anchor="middle" class="chart-title">{escape(metric)}</text>',
           f'<line x1="{PAD_LEFT}" y1="{PAD_TOP}" x2="{PAD_LEFT}" y2="{y(lo):.1f}" class="axis"/>',
           f'<line x1="{PAD_LEFT}" y1="{y(0.0) if lo < 0 else y(lo):.1f}" x2="{PANEL_W - 6}" '
           f'y2="{y(0.0) if lo < 0 else y(lo):.1f}" class="axis"/>',
           f'<text x="{PAD_LEFT - 4}" y="{PAD_TOP + 4}" text-anchor="end" class="tick">{_fmt(hi)}</text>',
           f'<text x="{PAD_LEFT - 4}" y="{y(lo):.1f}" text-anchor="end" class="tick">{_fmt(lo)}</text>']
    slot = (PANEL_W - PAD_LEFT - 10) / max(1, len(bars))
    width = min(34.0, slot * 0.6)
    for i, b in enumerate(bars):
        cx = PAD_LEFT + slot * (i + 0.5)
        top, base = y(max(b["value"], 0.0) if lo >= 0 else b["value"]), y(0.0) if lo < 0 else y(lo)
        y1, y2 = min(top, base), max(top, base)
        colour = PROMOTED if b["promoted"] else OTHER
        ci = ""
        if b.get("ci_low") is not None and b.get("ci_high") is not None:
            ci = f" [{_fmt(b['ci_low'])}, {_fmt(b['ci_high'])}]"
        tip = f"{b['label']} {metric} = {_fmt(b['value'])}{ci} (n={b.get('n')})"
        out.append(f'<rect x="{cx - width / 2:.1f}" y="{y1:.1f}" width="{width:.1f}" height="{max(y2 - y1, 0.5):.1f}" '
                   f'fill="{colour}" data-version="{escape(b["label"])}" data-value="{b["value"]:.6g}">'
                   f'<title>{escape(tip)}</title></rect>')
        if ci:
            wl, wh = y(b["ci_low"]), y(b["ci_high"])
            out.append(f'<g class="whisker"><line x1="{cx:.1f}" y1="{wl:.1f}" x2="{cx:.1f}" y2="{wh:.1f}"/>'
                       f'<line x1="{cx - 5:.1f}" y1="{wl:.1f}" x2="{cx + 5:.1f}" y2="{wl:.1f}"/>'
                       f'<line x1="{cx - 5:.1f}" y1="{wh:.1f}" x2="{cx + 5:.1f}" y2="{wh:.1f}"/></g>')
        out.append(f'<text x="{cx:.1f}" y="{PANEL_H - PAD_BOTTOM + 14}" text-anchor="middle" class="tick">'
                   f'{escape(b["label"])}</text>')
        out.append(f'<text x="{cx:.1f}" y="{PANEL_H - PAD_BOTTOM + 27}" text-anchor="middle" class="tick value">'
                   f'{_fmt(b["value"])}</text>')
    out.append("</g>")
    return out


def _svg(attrs: str, n_panels: int, title: str, style: str, body: list[str]) -> SafeString:
    """`n_panels` side-by-side `_panel`s in one SVG (`title` and `attrs` already escaped)."""
    width = PANEL_W * n_panels
    head = (f'<svg {attrs} role="img" viewBox="0 0 {width} {PANEL_H}" width="{width}" height="{PANEL_H}" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{title}</title><style>.axis{{stroke:#888;stroke-width:1}}'
            f"{style}.tick{{font:10px sans-serif;fill:#444}}.chart-title{{font:bold 11px sans-serif;fill:#222}}"
            "</style>")
    return mark_safe(head + "".join(body) + "</svg>")  # noqa: S308 - every text node is escaped by the callers


def suite_chart(suite: str, cells: list[tuple[Any, Any]], metrics: list[str]) -> SafeString:
    """A panel per metric (its own scale), a bar per version that ran the suite; "" when nothing to draw.

    ``cells``: ``[(policy_version, (suite_result_dict, report) | None)]`` in column order.
    """
    panels: list[tuple[str, list[dict[str, Any]]]] = []
    for m in metrics:
        bars = []
        for pv, cell in cells:
            res = cell[0] if cell else None
            met = ((res or {}).get("metrics") or {}).get(m) if res and res.get("status") == "ok" else None
            if isinstance(met, dict) and isinstance(met.get("value"), int | float):
                bars.append({"label": f"v{pv.version}", "value": float(met["value"]), "ci_low": met.get("ci_low"),
                             "ci_high": met.get("ci_high"), "n": met.get("n"), "promoted": pv.status == "promoted"})
        if bars:
            panels.append((m, bars))
    if not panels:
        return mark_safe("")
    body = [part for i, (m, bars) in enumerate(panels) for part in _panel(m, bars, i * PANEL_W)]
    return _svg(f'class="bench-chart" data-suite="{escape(suite)}"', len(panels),
                f"{escape(suite)}: value per version with 95 % interval whiskers",
                ".whisker line{stroke:#222;stroke-width:1.4}", body)


def _reference_line(bars: list[dict[str, Any]], level: float, x0: int, label: str) -> str:
    """A dashed line at `level` on a `_panel` of these bars (same scale arithmetic as `_panel`)."""
    vals = [b["value"] for b in bars]
    lo, hi = min(0.0, *vals), max(vals)
    if lo >= 0.0 and hi <= 1.0:
        hi = 1.0
    hi = hi if hi > lo else lo + 1.0
    if not lo <= level <= hi:
        return ""
    y = PAD_TOP + (PANEL_H - PAD_TOP - PAD_BOTTOM) * (1 - (level - lo) / (hi - lo))
    return (f'<g class="reference" transform="translate({x0},0)"><line x1="{PAD_LEFT}" y1="{y:.1f}" '
            f'x2="{PANEL_W - 6}" y2="{y:.1f}"/><text x="{PANEL_W - 6}" y="{y - 3:.1f}" text-anchor="end" '
            f'class="tick">{escape(label)}</text></g>')


VARIANT_PANELS = (("size", "size ×"), ("tok/s", "tokens/s ×"), ("accuracy", "accuracy Δ"))


def variant_chart(source_label: str, variants: list[tuple[str, dict[str, Any] | None]]) -> SafeString:
    """Each variant's size and tokens/s as a multiple of its source's, and its accuracy difference.

    ``variants``: ``[(label, against)]`` where ``against`` is ``selectors._against``'s dict (label →
    {"value", "how"}). A dashed line marks the source (1× or Δ 0); "" when nothing was measured.
    """
    panels: list[tuple[str, list[dict[str, Any]], float]] = []
    for key, title in VARIANT_PANELS:
        bars = [{"label": label, "value": float(a[key]["value"]), "promoted": False, "n": "—"}
                for label, a in variants if a and a.get(key, {}).get("value") is not None]
        if bars:
            panels.append((title, bars, 0.0 if key == "accuracy" else 1.0))
    if not panels:
        return mark_safe("")
    body = []
    for i, (title, bars, level) in enumerate(panels):
        body += _panel(title, bars, i * PANEL_W)
        body.append(_reference_line(bars, level, i * PANEL_W, f"{source_label} {'Δ 0' if level == 0 else '1×'}"))
    return _svg('class="bench-chart variant-chart"', len(panels),
                f"variants of {escape(source_label)} relative to it (dashed: the source)",
                ".reference line{stroke:#b5542b;stroke-dasharray:4 3}", body)
