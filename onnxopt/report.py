"""Reports people read: the optimize report as JSON, or as one self-contained HTML page
(inline SVG charts, no network assets). Builds data and files; prints nothing."""

from __future__ import annotations

import html
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .version import __version__


def build(*, source: str, output: str, pipeline: str, records: list, before: dict, after: dict,
          validation: dict | None = None, latency: dict | None = None) -> dict[str, Any]:
    return {
        "onnxopt": __version__, "input": source, "output": output, "pipeline": pipeline,
        "passes": [r.to_dict() for r in records], "before": before, "after": after,
        "validation": validation, "latency": latency,
    }


def write(path: str | Path, data: dict[str, Any]) -> Path:
    """JSON for ``.json`` (and anything else), a standalone page for ``.html``/``.htm``; atomic."""
    path = Path(path)
    text = render_html(data) if path.suffix.lower() in (".html", ".htm") else json.dumps(data, indent=2, default=str)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path


def _bar_chart(title: str, rows: list[tuple[str, float, str]], color: str) -> str:
    """Horizontal bars as inline SVG; rows are (label, value, value text)."""
    if not rows:
        return ""
    width, bar_h, label_w = 640, 22, 170
    top = max(v for _, v, _ in rows) or 1.0
    parts = [f'<svg width="{width}" height="{bar_h * len(rows) + 30}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="0" y="14" font-weight="bold">{html.escape(title)}</text>']
    for k, (label, value, text) in enumerate(rows):
        y = 24 + k * bar_h
        w = max(1.0, (width - label_w - 90) * value / top)
        parts.append(f'<text x="0" y="{y + 14}">{html.escape(label)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{bar_h - 6}" fill="{color}"/>')
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 14}">{html.escape(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(data: dict[str, Any]) -> str:
    before, after = data["before"], data["after"]
    passes = data["passes"]
    labels = [f"{k + 1}. {p['name']}" for k, p in enumerate(passes)]
    time_chart = _bar_chart("seconds per pass", [(lbl, p["seconds"], f"{p['seconds']:.3f} s")
                                                 for lbl, p in zip(labels, passes)], "#4c78a8")
    node_chart = _bar_chart("nodes after each pass", [("input", before["nodes"], str(before["nodes"]))] +
                            [(lbl, p["nodes_after"], str(p["nodes_after"])) for lbl, p in zip(labels, passes)],
                            "#f58518")
    summary_rows = [[key, before.get(key), after.get(key)] for key in
                    ("nodes", "initializers", "params", "weight_bytes", "file_bytes", "subgraphs", "functions")]
    ops = sorted(set(before["op_histogram"]) | set(after["op_histogram"]),
                 key=lambda op: -(before["op_histogram"].get(op, 0)))
    op_rows = [[op, before["op_histogram"].get(op, 0), after["op_histogram"].get(op, 0)] for op in ops]
    pass_rows = [[p["name"], p["options"], f"{p['seconds']:.3f}", "yes" if p["changed"] else "no",
                  f"{p['nodes_before']} → {p['nodes_after']}", p.get("numerics", ""),
                  ", ".join(f"{k}={v}" for k, v in p["stats"].items())] for p in passes]
    sections = [
        f"<h1>onnxopt report</h1><p><code>{html.escape(data['input'])}</code> → "
        f"<code>{html.escape(data['output'])}</code><br>pipeline <code>{html.escape(data['pipeline'])}</code>"
        f"<br>onnxopt {html.escape(data['onnxopt'])}</p>",
        "<h2>Before / after</h2>" + _table(["", "before", "after"], summary_rows),
        "<h2>Passes</h2>" + time_chart + node_chart +
        _table(["pass", "options", "seconds", "changed", "nodes", "numerics", "statistics"], pass_rows),
    ]
    validation = data.get("validation")
    if validation:
        rows = [[o["name"], f"{o['max_abs']:.3g}", f"{o['max_rel']:.3g}", f"{o['cosine']:.6f}",
                 f"{o['mismatch']:.3%}"] for o in validation["outputs"]]
        verdict = "within" if validation["ok"] else "OVER"
        sections.append(f"<h2>Numerics ({verdict} tolerance {validation['tol']:g}, {validation['samples']} samples)</h2>"
                        + _table(["output", "max abs", "max rel", "cosine", "mismatch"], rows))
    latency = data.get("latency")
    if latency:
        rows = [[label, f"{s['median_ms']:.3f}", f"{s['p90_ms']:.3f}", f"{s['throughput_per_s']:.1f}", s["provider"],
                 s["threads"]] for label, s in latency["stats"].items()]
        sections.append(f"<h2>Latency (ratio after/before {latency['ratio']:.3f})</h2>" +
                        _table(["model", "median ms", "p90 ms", "per s", "provider", "threads"], rows))
    sections.append("<h2>Op histogram</h2>" + _table(["op", "before", "after"], op_rows))
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:980px}table{border-collapse:collapse;"
             "margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
             "th{background:#f3f3f3}svg{display:block;margin:0.5em 0;font-size:12px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>onnxopt report</title>"
            f"<style>{style}</style></head><body>{''.join(sections)}</body></html>")
