"""A terminal line chart in plain characters, for `schedctl metrics RUN --chart NAME`.

A pure function of the points, so it is tested exactly and needs no curses, no colour and no
plotting library: a loss curve over SSH should be one command away.

    loss
      2.31 |*
           | **
           |   ***
      0.12 |      *******
           +-------------
            0          90
"""

from __future__ import annotations

import math
from collections.abc import Sequence

MIN_WIDTH = 8
MIN_HEIGHT = 2


def _label(value: float) -> str:
    """A compact number for an axis: 4 significant digits, no trailing noise."""
    if value == 0:
        return "0"
    if abs(value) >= 1e6 or abs(value) < 1e-3:
        return f"{value:.3g}"
    return f"{value:.4g}"


def _fraction(value: float, lo: float, hi: float) -> float:
    """Where `value` lies between `lo` (0) and `hi` (1), for any finite floats: halved first, so that
    `hi - lo` cannot overflow to infinity (as 1e308 - -1e308 would); 0 when the two are equal."""
    span = hi / 2 - lo / 2
    if span == 0:
        return 0.0
    return (value / 2 - lo / 2) / span


def _between(lo: float, hi: float, fraction: float) -> float:
    """The value `fraction` of the way from `lo` to `hi`; finite for finite ends (no `hi - lo`), and never
    outside them."""
    value = lo * (1 - fraction) + hi * fraction
    return min(max(value, min(lo, hi)), max(lo, hi))


def _sample(points: Sequence[tuple[float, float]], x: float) -> float:
    """y at `x` by linear interpolation between the neighbouring points (sorted by x)."""
    lo, hi = 0, len(points) - 1
    if x <= points[lo][0]:
        return points[lo][1]
    if x >= points[hi][0]:
        return points[hi][1]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if points[mid][0] <= x:
            lo = mid
        else:
            hi = mid
    (x0, y0), (x1, y1) = points[lo], points[hi]
    return y0 if x1 == x0 else _between(y0, y1, _fraction(x, x0, x1))


def line_chart(points: list[tuple[float, float]], width: int = 60, height: int = 12, title: str = "") -> str:
    """Draw `points` (x, y) as a line of `*` in a `width` x `height` plot area, with axes.

    Points need not be sorted; non-finite ones (NaN, inf: a diverged loss) are left out, and any finite
    values draw, up to +-1.8e308 (the arithmetic never computes a span that overflows).
    The y axis shows the max, the min and (when tall enough) the middle; the x axis its
    first and last x. Several points in one column show as their interpolated line, so a
    long run still reads as a curve, and gaps between rows are joined with `:`.

    Example:
        >>> print(line_chart([(0, 1.0), (1, 0.5), (2, 0.25)], width=8, height=3, title="loss"))

    Args:
        points: (x, y) pairs, e.g. (step, value).
        width: Columns of the plot area (the axis labels come on top of that).
        height: Rows of the plot area.
        title: A first line, usually the metric's name; "" for none.

    Returns:
        The chart as lines joined by "\\n", without a trailing newline.

    Raises:
        ValueError: `width` below 8 or `height` below 2.
    """
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        raise ValueError(f"a chart needs width >= {MIN_WIDTH} and height >= {MIN_HEIGHT}, got {width}x{height}")
    pts = sorted((float(x), float(y)) for x, y in points if math.isfinite(x) and math.isfinite(y))
    lines = [title] if title else []
    if not pts:
        lines.append("(no data)")
        return "\n".join(lines)

    xmin, xmax = pts[0][0], pts[-1][0]
    ymin = min(y for _, y in pts)
    ymax = max(y for _, y in pts)
    flat = ymax == ymin

    def row_of(y: float) -> int:  # 0 is the top row
        if flat:
            return height // 2
        return min(height - 1, max(0, round(_fraction(y, ymax, ymin) * (height - 1))))

    grid = [[" "] * width for _ in range(height)]
    previous: int | None = None
    for col in range(width):
        x = xmin if width == 1 or xmax == xmin else _between(xmin, xmax, col / (width - 1))
        row = row_of(_sample(pts, x))
        if previous is not None and abs(row - previous) > 1:
            step = 1 if row > previous else -1
            for between in range(previous + step, row, step):
                grid[between][col] = ":"
        grid[row][col] = "*"
        previous = row
        if xmax == xmin:  # a single x: one point, not a flat line across the chart
            break

    labels = {0: _label(ymax), height - 1: _label(ymin)}
    if flat:
        labels = {height // 2: _label(ymin)}
    elif height >= 5:
        labels[(height - 1) // 2] = _label(_between(ymax, ymin, ((height - 1) // 2) / (height - 1)))
    pad = max(len(text) for text in labels.values())
    for i, row_cells in enumerate(grid):
        lines.append(f"{labels.get(i, '').rjust(pad)} |{''.join(row_cells).rstrip()}")
    lines.append(" " * pad + " +" + "-" * width)
    left, right = _label(xmin), _label(xmax)
    gap = max(1, width - len(left) - len(right))
    axis = left if xmax == xmin else left + " " * gap + right
    lines.append(" " * (pad + 2) + axis)
    return "\n".join(line.rstrip() for line in lines)
