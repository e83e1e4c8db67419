"""``python -m hf_layerwise report RUN_DIR``: PNG plots and one self-contained HTML page from ``health.jsonl``."""

from __future__ import annotations

import base64
import html
import json
import os
import warnings
from typing import Any

__all__ = ["REPORT_FILES", "load_health", "render_report"]

PLOTS = {
    "lr_per_depth.png": ("lr", "learning rate", False),
    "update_ratio_per_depth.png": ("update_ratio", "update / weight norm  ||dW|| / ||W||", True),
    "grad_norm_per_depth.png": ("grad_norm", "gradient norm (pre-clip)", True),
}
HISTOGRAMS = "weight_histograms.png"
HTML = "report.html"
REPORT_FILES = (HTML, *PLOTS, HISTOGRAMS)  # what render_report may write into the run folder


def load_health(run_dir: str) -> list[dict[str, Any]]:
    path = os.path.join(run_dir, "health.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no health log; train with HealthCallback / HealthMonitor "
                                "(recipes/glue.py --monitor) and point the report at that output folder")
    with open(path) as f:
        lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    records = []
    for i, (n, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError as err:
            if i == len(lines) - 1 and records:  # the last record of a run killed while writing it
                warnings.warn(f"{path}:{n}: the last record is incomplete (a run stopped while writing it); "
                              "reporting the records before it", stacklevel=2)
                break
            raise ValueError(f"{path}:{n}: not a health record ({err}); the log is damaged") from None
    return records


def _series(records: list[dict], figure: str) -> dict[int, tuple[list[int], list[float]]]:
    series: dict[int, tuple[list[int], list[float]]] = {}
    for r in records:
        values = r.get("lr", {}) if figure == "lr" else {d: s.get(figure) for d, s in r["depths"].items()}
        for depth, value in values.items():
            if value is not None:
                xs, ys = series.setdefault(int(depth), ([], []))
                xs.append(r["step"])
                ys.append(value)
    return dict(sorted(series.items()))


def render_report(run_dir: str) -> str:
    """Write the PNGs and ``report.html`` into ``run_dir``; return the HTML path.

    Example:
        >>> render_report("runs/rte")     # doctest: +SKIP
        'runs/rte/report.html'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = load_health(run_dir)
    steps = [r for r in records if r.get("type") == "step"]
    if not steps:
        raise ValueError(f"{run_dir}/health.jsonl has no measured step yet")
    num_layers = next((r["num_layers"] for r in records if r.get("type") == "config"), None)
    cmap = plt.get_cmap("viridis")
    written = []

    def color(depth: int) -> Any:
        return cmap(depth / max((num_layers or 1) + 1, 1))

    for filename, (figure, label, log) in PLOTS.items():
        fig, ax = plt.subplots(figsize=(7, 4))
        for depth, (xs, ys) in _series(steps, figure).items():
            ax.plot(xs, ys, marker="o", markersize=3, color=color(depth), label=f"depth {depth}")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(run_dir, filename), dpi=100)
        plt.close(fig)
        written.append(filename)

    hists = {}
    for r in records:
        if r.get("type") == "weight_histogram":
            hists[r["depth"]] = r  # the last one per depth
    if hists:
        cols = min(4, len(hists))
        rows = (len(hists) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
        for ax, (depth, h) in zip(axes.flat, sorted(hists.items())):
            n = len(h["counts"])
            width = (h["max"] - h["min"]) / n if h["max"] > h["min"] else 1.0
            ax.bar([h["min"] + (i + 0.5) * width for i in range(n)], h["counts"], width=width, color=color(depth))
            ax.set_yscale("log")
            ax.set_title(f"depth {depth} (step {h['step']})", fontsize=8)
            ax.tick_params(labelsize=6)
        for ax in list(axes.flat)[len(hists):]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(os.path.join(run_dir, HISTOGRAMS), dpi=100)
        plt.close(fig)
        written.append(HISTOGRAMS)

    alarms = [(r["step"], a) for r in steps for a in r.get("alarms", [])]
    alarms += [(r["step"], r["message"]) for r in records if r.get("type") == "alarm"]
    last = steps[-1]
    figures = sorted({f for s in last["depths"].values() for f in s})
    table = "".join(
        f"<tr><td>{d}</td>" + "".join(f"<td>{s.get(f, float('nan')):.4g}</td>" for f in figures) + "</tr>"
        for d, s in sorted(last["depths"].items(), key=lambda kv: int(kv[0])))
    images = ""
    for filename in written:
        with open(os.path.join(run_dir, filename), "rb") as f:
            data = base64.b64encode(f.read()).decode()
        images += (f'<figure><img src="data:image/png;base64,{data}" alt="{filename}" title="{filename}">'
                   f"<figcaption>{filename}</figcaption></figure>\n")
    alarm_html = "".join(f"<li>step {s}: {html.escape(a)}</li>" for s, a in alarms) or "<li>none</li>"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>hf-layerwise health report: {html.escape(run_dir)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} img{{max-width:100%}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}</style></head>
<body><h1>Training health: {html.escape(os.path.abspath(run_dir))}</h1>
<p>{len(steps)} measured steps (last: step {last['step']}); depth 0 = embeddings, 1..L = blocks, L+1 = head.</p>
<h2>Alarms</h2><ul>{alarm_html}</ul>
<h2>Last measurement (step {last['step']})</h2>
<table><tr><th>depth</th>{''.join(f'<th>{f}</th>' for f in figures)}</tr>{table}</table>
<h2>Plots</h2>
{images}</body></html>
"""
    path = os.path.join(run_dir, HTML)
    with open(path, "w") as f:
        f.write(page)
    return path
