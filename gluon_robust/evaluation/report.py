"""The evaluation report: ``report.json``, ``report.md`` and a self-contained ``report.html``.

Every per-stage figure, in the terminal table, ``report.md``, ``report.html``
and ``report.json`` (``cumulative_robust_accuracy``), has one denominator: all
evaluated samples. In the cascade (Croce & Hein 2020) a stage attacks only the
samples every earlier stage of its threat model left robust, so the figure after
a stage is cumulative, and after the last stage it is the worst case.

The HTML embeds its plots as base64 PNG (matplotlib, Agg backend): robust
accuracy against epsilon after each stage, stacked bars of what each stage
broke out of all samples, histograms of the perturbation size of successful
examples where it varies (as a fraction of epsilon), and a grid of clean /
adversarial / amplified difference images with their predicted labels, titled
with their budget. Everything is computed from
``report.json`` plus ``examples.npz`` (the images of the grid), so merged
shard reports render the same as the unsharded one.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..io import atomic_save_npz, atomic_write_json, atomic_write_text
from ..reporting import format_table
from .figures import _accuracy_figure, _grid_figure, _norm_figure, _png, _stage_figure
from .report_data import (  # noqa: F401 -- empty_examples, comparable re-exported
    DENOMINATOR_NOTE, EXAMPLE_KEYS, TIMING_KEYS, _eps_text, class_label, comparable, empty_examples, grid_budget,
    stage_accuracies, stage_counts,
)

__all__ = ["write_report", "summary_table", "recipe_line", "stage_accuracies", "stage_counts", "grid_budget",
           "EXAMPLE_KEYS", "TIMING_KEYS", "comparable"]

logger = logging.getLogger(__name__)


def summary_table(report: Dict[str, Any]) -> str:
    """One row per attack stage and per worst case, as plain text; every percentage is of all ``n`` samples."""
    n = report["n"]
    rows = [["clean", "-", "-", "-", "-", f"{100 * report['clean_accuracy']:.1f}%", "-"]]
    for a, accuracy in zip(report["attacks"], stage_accuracies(report)):
        rows.append([a["name"], a["norm"], _eps_text(a["eps"]), a["attacked"], a["broken"],
                     f"{100 * accuracy:.1f}%", f"{a['seconds']:.1f}"])
    for w in report["worst_case"]:
        rows.append(["worst case", w["norm"], _eps_text(w["eps"]), "-", "-", f"{100 * w['robust_accuracy']:.1f}%", "-"])
    return format_table(rows, ["attack", "norm", "eps", "attacked", "broken", f"robust accuracy (of {n})", "seconds"])


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
        f"| attack | norm | eps | attacked | broken | robust accuracy after stage (of {report['n']}) "
        "| mean queries | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a, accuracy in zip(report["attacks"], stage_accuracies(report)):
        lines.append(f"| {a['name']} | {a['norm']} | {_eps_text(a['eps'])} | {a['attacked']} | {a['broken']} | "
                     f"{100 * accuracy:.2f}% | {a['mean_queries']:.0f} | {a['seconds']:.1f} |")
    lines += ["", DENOMINATOR_NOTE.format(n=report["n"]) + "."]
    lines += ["", "| worst case | eps | robust accuracy |", "|---|---|---|"]
    lines += [f"| {w['norm']} | {_eps_text(w['eps'])} | {100 * w['robust_accuracy']:.2f}% |"
              for w in report["worst_case"]]
    lines += ["", "## Warnings", ""]
    lines += [f"- {w}" for w in report.get("warnings", [])] or ["none"]
    lines += ["", "## Versions", ""]
    lines += [f"- {k}: {v}" for k, v in report.get("versions", {}).items()]
    shown = _example_lines(report, examples)
    if shown:
        lines += ["", f"## Adversarial examples ({grid_budget(report, examples)})", ""] + [f"- {line}" for line in shown]
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
        ["attack", "norm", "eps", "attacked", "broken", f"robust accuracy after stage (of {report['n']})",
         "mean queries", "seconds"],
        [[a["name"], a["norm"], _eps_text(a["eps"]), a["attacked"], a["broken"], f"{100 * accuracy:.2f}%",
          f"{a['mean_queries']:.0f}", f"{a['seconds']:.1f}"]
         for a, accuracy in zip(report["attacks"], stage_accuracies(report))],
    ))
    parts.append(f"<p>{esc(DENOMINATOR_NOTE.format(n=report['n']))}.</p>")
    parts.append("<h2>Worst case per sample</h2>")
    parts.append(_table(["norm", "eps", "robust accuracy"],
                        [[w["norm"], _eps_text(w["eps"]), f"{100 * w['robust_accuracy']:.2f}%"]
                         for w in report["worst_case"]]))
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
    grid = "Clean / adversarial / amplified difference"
    if len(examples["y"]):
        grid += f" ({grid_budget(report, examples)})"
    plots = {}
    for title, figure in (("Robust accuracy against epsilon", _accuracy_figure(report)),
                          ("What each stage broke", _stage_figure(report)),
                          ("Perturbation size of the successful adversarial examples", _norm_figure(report)),
                          (grid, _grid_figure(report, examples, bounds))):
        plots[title] = None if figure is None else _png(figure)
    atomic_write_text(out / "report.html", _html(report, plots, _example_lines(report, examples)))
