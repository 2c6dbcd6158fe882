"""HTML for the web dashboard (scheduler/web.py): the layout, tables, and line charts drawn as SVG.

Pure functions from data to text. Everything a user or an agent chose (run names, labels, log lines,
metric names, pending reasons) passes through `h` (html.escape) on its way in; the only markup that is
not escaped here is markup these functions built themselves.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import quote, urlencode

from google.protobuf.timestamp_pb2 import Timestamp

from gridlab.v1 import types_pb2


def h(value: object) -> str:
    """Text, escaped for HTML (element content and double- or single-quoted attributes)."""
    return html.escape(str(value), quote=True)


def url(path: str, **query: object) -> str:
    """A path with its query, each piece percent-encoded (then escape it with `h` inside an attribute)."""
    pairs = {k: str(v) for k, v in query.items() if v not in (None, "")}
    return path + ("?" + urlencode(pairs) if pairs else "")


def seg(value: str) -> str:
    """One path segment, percent-encoded (ids are plain, but never trust that in a link)."""
    return quote(value, safe="")


CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:8px 16px;display:flex;gap:18px;align-items:center}
header a{color:#cfd6e4;text-decoration:none}header a:hover{color:#fff}
header .who{margin-left:auto;color:#9aa4b8}header form{display:inline}
header button{background:none;border:1px solid #56607a;color:#cfd6e4;border-radius:4px;cursor:pointer}
main{padding:16px;max-width:1400px}h1{font-size:20px;margin:4px 0 12px}h2{font-size:16px;margin:20px 0 8px}
table{border-collapse:collapse;background:#fff;margin-bottom:12px}
th,td{border:1px solid #dde1e8;padding:3px 8px;text-align:left;vertical-align:top}th{background:#eef0f4}
.state{font-weight:600}.QUEUED{color:#8a6d00}.STARTING,.RUNNING{color:#0a58ca}.SUCCEEDED{color:#198754}
.FAILED,.LOST{color:#b02a37}.CANCELLED,.OFFLINE{color:#6c757d}.READY{color:#198754}.CORDONED,.DRAINING{color:#8a6d00}
.card{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:10px 12px;margin-bottom:12px}
.bar{display:inline-block;width:80px;height:8px;background:#e6e9ef;border-radius:4px;vertical-align:middle}
.bar i{display:block;height:8px;background:#0a58ca;border-radius:4px}
pre.log{background:#0f1420;color:#d8dee9;padding:8px;max-height:360px;overflow:auto;margin:0 0 8px;font-size:12px}
.muted{color:#6c757d}.err{color:#b02a37;font-weight:600}form.filters input,form.filters select{margin-right:6px}
.charts{display:flex;flex-wrap:wrap;gap:12px}.charts svg{background:#fff;border:1px solid #dde1e8;border-radius:6px}
code{background:#eef0f4;padding:0 3px;border-radius:3px}
"""

PALETTE = ("#0a58ca", "#d63384", "#198754", "#fd7e14", "#6f42c1", "#20c997", "#dc3545", "#6c757d", "#0dcaf0", "#8a6d00")


def page(title: str, body: str, *, user: str = "", role: str = "", nav: bool = True) -> str:
    """A whole page: the header with links and who is logged in, then `body` (already HTML)."""
    head = ""
    if nav:
        who = f"{h(user)} ({h(role)})" if user else ""
        head = (
            '<header><b>gridlab</b><a href="/cluster">Cluster</a><a href="/runs">Runs</a><a href="/sweeps">Sweeps</a>'
            f'<span class="who">{who}</span>'
            '<form method="post" action="/logout"><button type="submit">Log out</button></form></header>'
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{h(title)} - gridlab</title><style>{CSS}</style></head>"
        f"<body>{head}<main>{body}</main></body></html>"
    )


def login_page(message: str = "", *, next_path: str = "/cluster") -> str:
    error = f'<p class="err" id="login-error">{h(message)}</p>' if message else ""
    body = (
        '<div class="card" style="max-width:460px;margin:40px auto"><h1>gridlab: log in</h1>'
        "<p>Paste your API token (what <code>GRIDLAB_TOKEN</code> holds; an admin makes one with "
        "<code>schedctl token create</code>).</p>"
        f"{error}"
        '<form method="post" action="/login">'
        f'<input type="hidden" name="next" value="{h(next_path)}">'
        '<input type="password" name="token" id="token" autocomplete="off" style="width:100%;margin-bottom:8px" '
        'placeholder="token" required autofocus><button type="submit" id="login">Log in</button></form></div>'
    )
    return page("Log in", body, nav=False)


def error_page(status: int, message: str, *, user: str = "", role: str = "") -> str:
    body = f'<h1>{status}</h1><p class="err">{h(message)}</p><p><a href="/runs">Back to the runs</a></p>'
    return page(f"Error {status}", body, user=user, role=role)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, table_id: str = "") -> str:
    """A table: `headers` are plain text (escaped here); each cell of `rows` is HTML already."""
    ident = f' id="{h(table_id)}"' if table_id else ""
    head = "".join(f"<th>{h(x)}</th>" for x in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def enum_word(enum: object, value: int, prefix: str) -> str:
    name: str = enum.Name(value)  # type: ignore[attr-defined]
    return name.removeprefix(prefix)


def run_state(run: types_pb2.Run) -> str:
    return enum_word(types_pb2.RunState, run.state, "RUN_STATE_")


def state_span(word: str) -> str:
    return f'<span class="state {h(word)}">{h(word)}</span>'


def seconds(stamp: Timestamp) -> float | None:
    return stamp.seconds + stamp.nanos / 1e9 if stamp.seconds or stamp.nanos else None


def when(stamp: Timestamp) -> str:
    t = seconds(stamp)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t is not None else ""


def duration(run: types_pb2.Run, now: float | None = None) -> str:
    start = seconds(run.started_at)
    if start is None:
        return ""
    end = seconds(run.finished_at) or (now if now is not None else time.time())
    return human_seconds(max(0.0, end - start))


def human_seconds(total: float) -> str:
    s = int(total)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - the loop returns


def gpus_of(run: types_pb2.Run) -> str:
    res = run.spec.resources
    nodes = max(1, res.nodes)
    text = f"{nodes}x{res.gpus}" if nodes > 1 else str(res.gpus)
    if res.gpu_types:
        text += " " + ",".join(res.gpu_types)
    return text


def run_link(run_id: str, label: str | None = None) -> str:
    return f'<a href="/runs/{h(seg(run_id))}">{h(label if label is not None else run_id)}</a>'


def bar(percent: float) -> str:
    p = max(0.0, min(100.0, percent))
    return f'<span class="bar" title="{p:.0f}%"><i style="width:{p:.0f}%"></i></span> {p:.0f}%'


# ------------------------------------------------------------------ charts


def _nice(lo: float, hi: float) -> tuple[float, float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return 0.0, 1.0
    if hi == lo:
        pad = abs(hi) * 0.1 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.2e}"
    return f"{v:.4g}"


def line_chart(
    title: str,
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    width: int = 460,
    height: int = 240,
    max_points: int = 2000,
    chart_id: str = "",
) -> str:
    """An SVG line chart: one polyline per series of (x, y) points, axes with their ranges, a legend.

    Long series are thinned evenly to `max_points` for drawing; `data-points` on the <svg> counts the points
    received (before thinning), which tests and people can read."""
    left, right, top, bottom = 56, 12, 26, 30
    pw, ph = width - left - right, height - top - bottom
    clean = {name: [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)] for name, pts in series.items()}
    total = sum(len(p) for p in clean.values())
    ident = f' id="{h(chart_id)}"' if chart_id else ""
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg"{ident} class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" data-points="{total}" role="img" aria-label="{h(title)}">',
        f'<text x="{left}" y="16" font-size="13" font-weight="600">{h(title)}</text>',
    ]
    if total == 0:
        parts.append(f'<text x="{left + 10}" y="{top + ph / 2}" fill="#6c757d">no points yet</text></svg>')
        return "".join(parts)
    xs = [x for p in clean.values() for x, _ in p]
    ys = [y for p in clean.values() for _, y in p]
    x0, x1 = (min(xs), max(xs)) if min(xs) != max(xs) else (min(xs) - 1, max(xs) + 1)
    y0, y1 = _nice(min(ys), max(ys))

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + ph - (y - y0) / (y1 - y0) * ph

    parts.append(
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#c8ced9"/>'
        f'<text x="{left - 4}" y="{top + 10}" font-size="10" text-anchor="end">{h(_fmt(y1))}</text>'
        f'<text x="{left - 4}" y="{top + ph}" font-size="10" text-anchor="end">{h(_fmt(y0))}</text>'
        f'<text x="{left}" y="{height - 12}" font-size="10">{h(_fmt(x0))}</text>'
        f'<text x="{left + pw}" y="{height - 12}" font-size="10" text-anchor="end">{h(_fmt(x1))}</text>'
    )
    for i, (name, pts) in enumerate(clean.items()):
        if not pts:
            continue
        color = PALETTE[i % len(PALETTE)]
        step = max(1, math.ceil(len(pts) / max_points))
        shown = pts[::step] if pts[-1] in pts[::step] else [*pts[::step], pts[-1]]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in shown)
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{coords}" '
            f'data-series="{h(name)}" data-count="{len(pts)}"/>'
        )
        if len(pts) == 1:
            parts.append(f'<circle cx="{sx(pts[0][0]):.1f}" cy="{sy(pts[0][1]):.1f}" r="2.5" fill="{color}"/>')
        if len(clean) > 1:
            ly = top + 12 + 13 * i
            parts.append(
                f'<rect x="{left + pw - 120}" y="{ly - 8}" width="8" height="8" fill="{color}"/>'
                f'<text x="{left + pw - 108}" y="{ly}" font-size="10">{h(name[:24])}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


# ------------------------------------------------------------------ metrics records

SKIP_KEYS = frozenset({"step", "epoch", "attempt", "time", "timestamp", "global_step"})


def metric_series(records: Iterable[Mapping[str, object]]) -> dict[str, list[tuple[float, float]]]:
    """Per metric name, its (step, value) points, in the order logged (a record without a step counts)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for i, record in enumerate(records):
        step = record.get("step", i)
        x = float(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else float(i)
        for key, value in record.items():
            if key in SKIP_KEYS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            out.setdefault(str(key), []).append((x, float(value)))
    return out


def thin(points: list[tuple[float, float]], most: int) -> list[tuple[float, float]]:
    """At most about `most` of the points, evenly: every k-th, and the last."""
    if len(points) <= most:
        return points
    step = math.ceil(len(points) / max(1, most))
    shown = points[::step]
    return shown if shown[-1] is points[-1] else [*shown, points[-1]]
