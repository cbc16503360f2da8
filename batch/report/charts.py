"""Inline SVG charts from the figures: no fonts, scripts or files to fetch, text escaped."""

from __future__ import annotations

from html import escape

BAR = "#3b6fb6"
MAX_LABEL_BARS = 20


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (
        f'<svg width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        'font-family="sans-serif" font-size="12">' + "".join(body) + "</svg>"
    )


def label_bars(labels: list[dict], width: int = 560) -> str:
    """Horizontal bars, one per label (most common first), with the count at the end of each bar."""
    shown = labels[:MAX_LABEL_BARS]
    if not shown:
        return "<p>No successful classify rows.</p>"
    row, text_w, pad = 22, 180, 50
    top = max(item["count"] for item in shown)
    body = []
    for i, item in enumerate(shown):
        y = i * row
        w = max(1.0, (width - text_w - pad) * item["count"] / top)
        name = item["label"] if len(item["label"]) <= 26 else item["label"][:25] + "…"
        body.append(
            f'<text x="{text_w - 6}" y="{y + 15}" text-anchor="end">{escape(name)}</text>'
            f'<rect x="{text_w}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" fill="{BAR}">'
            f"<title>{escape(item['label'])}: {item['count']}</title></rect>"
            f'<text x="{text_w + w + 4:.1f}" y="{y + 15}">{item["count"]:,}</text>'
        )
    svg = _svg(width, row * len(shown) + 4, body, "rows per label")
    if len(labels) > len(shown):
        svg += f"<p class=note>Showing the {len(shown)} most common of {len(labels)} labels.</p>"
    return svg


def latency_histogram(bins: list[dict], width: int = 560, height: int = 220) -> str:
    """Vertical bars of rows per latency bin, with the axis in milliseconds."""
    if not bins:
        return "<p>No latencies recorded.</p>"
    left, bottom, top_pad = 44, 34, 10
    plot_w, plot_h = width - left - 24, height - bottom - top_pad  # room for the last tick label
    most = max(b["count"] for b in bins) or 1
    bar_w = plot_w / len(bins)
    body = [
        f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{left + plot_w}" y2="{top_pad + plot_h}" stroke="#444"/>',
        f'<text x="{left - 4}" y="{top_pad + 10}" text-anchor="end">{most:,}</text>',
        f'<text x="{left - 4}" y="{top_pad + plot_h}" text-anchor="end">0</text>',
    ]
    for i, b in enumerate(bins):
        h = plot_h * b["count"] / most
        x = left + i * bar_w
        body.append(
            f'<rect x="{x + 1:.1f}" y="{top_pad + plot_h - h:.1f}" width="{max(bar_w - 2, 1):.1f}" '
            f'height="{h:.1f}" fill="{BAR}"><title>{b["from_ms"]:,}–{b["to_ms"]:,} ms: '
            f'{b["count"]:,} rows</title></rect>'
        )
    for i in range(0, len(bins) + 1, max(1, len(bins) // 4)):
        edge = bins[i]["from_ms"] if i < len(bins) else bins[-1]["to_ms"]
        x = left + i * bar_w
        body.append(f'<text x="{x:.1f}" y="{top_pad + plot_h + 16}" text-anchor="middle">{edge:,.0f}</text>')
    body.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 2}" text-anchor="middle">latency (ms)</text>')
    return _svg(width, height, body, "latency histogram")
