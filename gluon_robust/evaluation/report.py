"""The evaluation report: ``report.json``, ``report.md`` and a self-contained ``report.html``.

The HTML embeds its plots as base64 PNG (matplotlib, Agg backend): robust
accuracy against epsilon per attack, histograms of the perturbation norms of
the successful attacks, and a grid of clean / adversarial / amplified
difference images with their predicted labels. Everything is computed from
``report.json`` plus ``examples.npz`` (the images of the grid), so merged
shard reports render the same as the unsharded one.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..io import atomic_save_npz, atomic_write_json, atomic_write_text
from ..reporting import format_table

__all__ = ["write_report", "summary_table", "recipe_line", "EXAMPLE_KEYS", "TIMING_KEYS", "comparable"]

logger = logging.getLogger(__name__)

#: Arrays of ``examples.npz``: clean and adversarial images, label, adversarial prediction, source index, attack.
EXAMPLE_KEYS = ("x", "x_adv", "y", "pred", "index", "attack")

#: Report fields that depend on the run, not on the result: timing, arguments, the shard and the cluster
#: (its chunks and per-worker timing).
TIMING_KEYS = ("seconds", "args", "shard", "cluster")


def comparable(report: Dict[str, Any]) -> Dict[str, Any]:
    """``report`` without :data:`TIMING_KEYS` (top level and per attack): what sharding must not change."""
    out = {k: v for k, v in report.items() if k not in TIMING_KEYS}
    out["attacks"] = [{k: v for k, v in a.items() if k != "seconds"} for a in report["attacks"]]
    return out


def empty_examples(sample_shape: tuple) -> Dict[str, np.ndarray]:
    """An empty set of examples for images of ``sample_shape``."""
    return {
        "x": np.zeros((0,) + tuple(sample_shape), np.float32), "x_adv": np.zeros((0,) + tuple(sample_shape), np.float32),
        "y": np.zeros(0, np.int64), "pred": np.zeros(0, np.int64), "index": np.zeros(0, np.int64),
        "attack": np.zeros(0, np.int64),
    }


def summary_table(report: Dict[str, Any]) -> str:
    """One row per attack stage and per worst case, as plain text."""
    rows = [["clean", "-", "-", "-", "-", f"{100 * report['clean_accuracy']:.1f}%", "-"]]
    for a in report["attacks"]:
        eps = "-" if a["eps"] is None else f"{a['eps']:g}"
        rows.append([a["name"], a["norm"], eps, a["attacked"], a["broken"],
                     f"{100 * a['robust_accuracy_after']:.1f}%", f"{a['seconds']:.1f}"])
    for w in report["worst_case"]:
        eps = "-" if w["eps"] is None else f"{w['eps']:g}"
        rows.append(["worst case", w["norm"], eps, "-", "-", f"{100 * w['robust_accuracy']:.1f}%", "-"])
    return format_table(rows, ["attack", "norm", "eps", "attacked", "broken", "robust accuracy", "seconds"])


# ------------------------------------------------------------------ plots
def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _accuracy_plot(report: Dict[str, Any]) -> Optional[str]:
    import matplotlib.pyplot as plt

    curves: Dict[str, List] = defaultdict(list)
    for a in report["attacks"]:
        if a["eps"] is not None:
            curves[f"after {a['name']} ({a['norm']})"].append((a["eps"], a["robust_accuracy_after"]))
    for w in report["worst_case"]:
        if w["eps"] is not None:
            curves[f"worst case ({w['norm']})"].append((w["eps"], w["robust_accuracy"]))
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in curves.items():
        points.sort()
        style = "k-o" if label.startswith("worst") else "-o"
        ax.plot([p[0] for p in points], [100 * p[1] for p in points], style, label=label, alpha=0.85)
    ax.axhline(100 * report["clean_accuracy"], color="grey", ls="--", lw=1, label="clean")
    ax.set_xlabel("epsilon")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("Robust accuracy (cascade: each stage on the points still robust)", fontsize=9)
    return _png(fig)


def _histogram_plot(report: Dict[str, Any]) -> Optional[str]:
    import matplotlib.pyplot as plt

    series = []
    for k, a in enumerate(report["attacks"]):
        values = [s["outcomes"][k]["distance"] for s in report["per_sample"]
                  if s["outcomes"][k]["broken"] and s["outcomes"][k]["distance"] is not None]
        if values:
            eps = "-" if a["eps"] is None else f"{a['eps']:g}"
            series.append((f"{a['name']} {a['norm']} eps={eps}", values))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in series:
        ax.hist(values, bins=20, alpha=0.5, label=f"{label} (n={len(values)})")
    ax.set_xlabel("perturbation norm of successful adversarial examples")
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    return _png(fig)


def class_label(value: int, class_names: Optional[Sequence[str]]) -> str:
    """``'3'``, or ``'3 (tench)'`` when the model's class names are known."""
    value = int(value)
    if class_names is None or not 0 <= value < len(class_names):
        return str(value)
    return f"{value} ({class_names[value]})"


def _grid_plot(examples: Dict[str, np.ndarray], names: List[str], bounds: tuple,
               class_names: Optional[Sequence[str]] = None) -> Optional[str]:
    import matplotlib.pyplot as plt

    count = len(examples["y"])
    if count == 0 or examples["x"].shape[1] not in (1, 3):
        return None
    low, high = bounds

    def show(ax: Any, img: np.ndarray, title: str) -> None:
        img = np.clip((img - low) / (high - low), 0, 1).transpose(1, 2, 0)
        ax.imshow(img[:, :, 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
        ax.axis("off")

    fig, axes = plt.subplots(count, 3, figsize=(5, 1.8 * count), squeeze=False)
    for i in range(count):
        x, adv = examples["x"][i], examples["x_adv"][i]
        diff = adv - x
        scale = float(np.abs(diff).max()) or 1.0
        show(axes[i][0], x, f"#{int(examples['index'][i])} label {class_label(examples['y'][i], class_names)}")
        show(axes[i][1], adv, f"{names[int(examples['attack'][i])]}: pred "
                              f"{class_label(examples['pred'][i], class_names)}")
        show(axes[i][2], low + (high - low) * (0.5 + 0.5 * diff / scale), f"diff x{0.5 / scale:.0f}")
    fig.tight_layout()
    return _png(fig)


# ------------------------------------------------------------------ text
def _defense_facts(report: Dict[str, Any]) -> List[tuple]:
    """The defence chain and the gradient path of each defence, for a defended model's report."""
    defense = report.get("defense")
    if not defense:
        return []
    paths = ", ".join(f"{d['name']}: {d['backward']} (declared {d['declared']})" for d in defense["defenses"])
    eot = defense.get("eot_samples", 1)
    return [("defence", defense["spec"]),
            ("gradient path", f"{defense['gradient']}: {paths}" + (f"; EOT over {eot} samples" if eot > 1 else ""))]


def _example_lines(report: Dict[str, Any], examples: Optional[Dict[str, np.ndarray]]) -> List[str]:
    """One line per adversarial example of the grid: ``#12 label 0 (tench) -> pgd: pred 1 (goldfish)``."""
    if examples is None or not len(examples["y"]):
        return []
    names = [a["name"] for a in report["attacks"]]
    class_names = report.get("class_names")
    return [f"#{int(i)}: label {class_label(y, class_names)} \u2192 {names[int(a)]}: pred {class_label(p, class_names)}"
            for i, y, p, a in zip(examples["index"], examples["y"], examples["pred"], examples["attack"])]


def recipe_line(report: Dict[str, Any]) -> str:
    """The recipe's name and how it differs from AutoAttack's standard version, in one line."""
    name = report.get("recipe", "?")
    differs = report.get("differs_from_standard")
    if differs is None:
        return str(name)
    if not differs:
        return f"{name} (AutoAttack's standard version, parameter for parameter)"
    return f"{name} (differs from AutoAttack's standard version: {'; '.join(differs)})"


def _markdown(report: Dict[str, Any], examples: Optional[Dict[str, np.ndarray]] = None) -> str:
    lines = [
        "# Robustness report",
        "",
        f"- model: {report.get('model', '?')}",
        f"- data: {report.get('data', '?')} ({report['n']} samples)",
        f"- recipe: {recipe_line(report)}",
        f"- norm {report.get('norm', '?')}, eps {report.get('eps', '?')}",
        f"- seed: {report.get('seed')}; mode: {report.get('mode')}",
        f"- clean accuracy: {100 * report['clean_accuracy']:.2f}%",
    ]
    lines += [f"- {k}: {v}" for k, v in _defense_facts(report)]
    lines += [
        "",
        "| attack | norm | eps | robust accuracy | after stage | attacked | broken | mean queries | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for a in report["attacks"]:
        lines.append(f"| {a['name']} | {a['norm']} | {a['eps']} | {100 * a['robust_accuracy']:.2f}% | "
                     f"{100 * a['robust_accuracy_after']:.2f}% | {a['attacked']} | "
                     f"{a['broken']} | {a['mean_queries']:.0f} | {a['seconds']:.1f} |")
    lines += ["", "| worst case | eps | robust accuracy |", "|---|---|---|"]
    lines += [f"| {w['norm']} | {w['eps']} | {100 * w['robust_accuracy']:.2f}% |" for w in report["worst_case"]]
    lines += ["", "## Warnings", ""]
    lines += [f"- {w}" for w in report.get("warnings", [])] or ["none"]
    lines += ["", "## Versions", ""]
    lines += [f"- {k}: {v}" for k, v in report.get("versions", {}).items()]
    shown = _example_lines(report, examples)
    if shown:
        lines += ["", "## Adversarial examples", ""] + [f"- {line}" for line in shown]
    lines += ["", "Plots and example images: report.html", ""]
    return "\n".join(lines)


def _table(header: List[str], rows: List[List[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _html(report: Dict[str, Any], plots: Dict[str, Optional[str]], examples: Sequence[str] = ()) -> str:
    esc = html.escape
    facts = [
        ("model", report.get("model", "?")), ("data", f"{report.get('data', '?')} ({report['n']} samples)"),
        ("recipe", recipe_line(report)), ("threat model", f"{report.get('norm', '?')}, eps {report.get('eps', '?')}"),
        ("seed", report.get("seed")), ("mode", report.get("mode")),
        ("clean accuracy", f"{100 * report['clean_accuracy']:.2f}%"),
    ] + _defense_facts(report)
    parts = ["<h1>Robustness report</h1><ul>"]
    parts += [f"<li><b>{esc(k)}</b>: {esc(str(v))}</li>" for k, v in facts]
    parts.append("</ul><h2>Attacks</h2>")
    parts.append(_table(
        ["attack", "norm", "eps", "robust accuracy", "after stage", "attacked", "broken", "mean queries", "seconds"],
        [[a["name"], a["norm"], a["eps"], f"{100 * a['robust_accuracy']:.2f}%",
          f"{100 * a['robust_accuracy_after']:.2f}%", a["attacked"], a["broken"],
          f"{a['mean_queries']:.0f}", f"{a['seconds']:.1f}"] for a in report["attacks"]],
    ))
    parts.append("<h2>Worst case per sample</h2>")
    parts.append(_table(["norm", "eps", "robust accuracy"],
                        [[w["norm"], w["eps"], f"{100 * w['robust_accuracy']:.2f}%"] for w in report["worst_case"]]))
    parts.append("<h2>Warnings</h2><ul>")
    parts += [f"<li>{esc(w)}</li>" for w in report.get("warnings", [])] or ["<li>none</li>"]
    parts.append("</ul>")
    for title, data in plots.items():
        if data:
            parts.append(f'<h2>{esc(title)}</h2><img alt="{esc(title)}" src="data:image/png;base64,{data}"/>')
    if examples:
        parts.append("<h2>Adversarial examples</h2><ul>" + "".join(f"<li>{esc(e)}</li>" for e in examples) + "</ul>")
    parts.append("<h2>Versions</h2><ul>")
    parts += [f"<li>{esc(k)}: {esc(str(v))}</li>" for k, v in report.get("versions", {}).items()]
    parts.append("</ul>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>Robustness report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_report(
    out_dir: str | Path,
    report: Dict[str, Any],
    examples: Dict[str, np.ndarray],
    *,
    bounds: tuple = (0.0, 1.0),
) -> None:
    """Write ``report.json``, ``report.md``, ``report.html`` and ``examples.npz`` into ``out_dir``.

    Call it on a :func:`~gluon_robust.reporting.staged_output` directory so that
    the report appears whole or not at all.
    """
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir)
    atomic_write_json(out / "report.json", report)
    atomic_save_npz(out / "examples.npz", **examples)
    atomic_write_text(out / "report.md", _markdown(report, examples))
    names = [a["name"] for a in report["attacks"]]
    plots = {
        "Robust accuracy against epsilon": _accuracy_plot(report),
        "Perturbation norms": _histogram_plot(report),
        "Clean / adversarial / amplified difference": _grid_plot(examples, names, bounds, report.get("class_names")),
    }
    atomic_write_text(out / "report.html", _html(report, plots, _example_lines(report, examples)))
