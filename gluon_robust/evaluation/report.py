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

import base64
import html
import io
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..errors import ConfigError
from ..io import atomic_save_npz, atomic_write_json, atomic_write_text
from ..reporting import format_table

__all__ = ["write_report", "summary_table", "recipe_line", "stage_accuracies", "stage_counts", "grid_budget",
           "EXAMPLE_KEYS", "TIMING_KEYS", "comparable"]

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


def stage_accuracies(report: Dict[str, Any]) -> List[float]:
    """Per attack stage, the robust accuracy after it, over *all* evaluated samples (cumulative in the cascade).

    Reads every version of ``report.json``: the ``cumulative_robust_accuracy``
    of current reports; for older ones, recomputed from their per-sample rows
    (the older per-stage ``robust_accuracy`` counted only what the stage itself
    broke), or their ``robust_accuracy_after``, which had the same meaning.

    Raises
    ------
    ConfigError
        For an old report with neither per-sample rows nor ``robust_accuracy_after``.
    """
    attacks = report["attacks"]
    if all("cumulative_robust_accuracy" in a for a in attacks):
        return [float(a["cumulative_robust_accuracy"]) for a in attacks]
    if report.get("per_sample") is not None:
        from .robustness import RobustnessResult

        return RobustnessResult.from_report(report).cumulative_robust_accuracy()
    if all("robust_accuracy_after" in a for a in attacks):
        return [float(a["robust_accuracy_after"]) for a in attacks]
    raise ConfigError("the report has no cumulative robust accuracy per stage (cumulative_robust_accuracy) and no "
                      "per-sample rows to recompute it from; evaluate again")


def _eps_text(eps: Optional[float]) -> str:
    return "-" if eps is None else f"{eps:g}"


#: What every per-stage percentage of the tables means.
DENOMINATOR_NOTE = ("robust accuracy after a stage: the fraction of all {n} evaluated samples still classified "
                    "correctly after it and every earlier stage of its threat model (each stage attacks only the "
                    "samples still robust)")


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


# ------------------------------------------------------------------ plots
def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _accuracy_figure(report: Dict[str, Any]) -> Any:
    """Robust accuracy against epsilon: after each stage and in the worst case, one line per distinct series.

    Series with the same points (the last stage of a threat model equals its
    worst case) are drawn once, under one joint label, so that every legend
    entry is a line that can be seen. None when no stage has an epsilon.
    """
    import matplotlib.pyplot as plt

    curves: Dict[str, List] = defaultdict(list)
    for a, accuracy in zip(report["attacks"], stage_accuracies(report)):
        if a["eps"] is not None:
            curves[f"after {a['name']} ({a['norm']})"].append((a["eps"], accuracy))
    for w in report["worst_case"]:
        if w["eps"] is not None:
            curves[f"worst case ({w['norm']})"].append((w["eps"], w["robust_accuracy"]))
    if not curves:
        return None
    groups: Dict[tuple, List[str]] = {}  # identical points -> the labels of those series
    for label, points in curves.items():
        groups.setdefault(tuple(sorted(points)), []).append(label)
    fig, ax = plt.subplots(figsize=(6, 4))
    for points, labels in groups.items():
        worst = [lab for lab in labels if lab.startswith("worst")]
        label = " = ".join(worst + [lab for lab in labels if not lab.startswith("worst")])
        style = "k-o" if worst else "-o"
        ax.plot([p[0] for p in points], [100 * p[1] for p in points], style, label=label, alpha=0.85)
    ax.axhline(100 * report["clean_accuracy"], color="grey", ls="--", lw=1, label="clean")
    ax.set_xlabel("epsilon")
    ax.set_ylabel(f"robust accuracy (% of all {report['n']} samples)")
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("Robust accuracy (cascade: each stage on the points still robust)", fontsize=9)
    return fig


def stage_counts(report: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Per threat model, how all ``n`` samples end: misclassified clean, broken first by each stage, or robust.

    Returns
    -------
    list of dict
        ``{"norm", "eps", "misclassified", "broken": {stage name: count}, "robust"}``
        per threat model, in the order of ``report["worst_case"]``; the counts
        of one threat model add up to ``n``.
    """
    samples = report["per_sample"]
    out = []
    for w in report["worst_case"]:
        ks = [k for k, a in enumerate(report["attacks"]) if (a["norm"], a["eps"]) == (w["norm"], w["eps"])]
        broken: Dict[str, int] = {report["attacks"][k]["name"]: 0 for k in ks}
        misclassified = robust = 0
        for s in samples:
            if s["label"] != s["clean_prediction"]:
                misclassified += 1
                continue
            first = next((k for k in ks if s["outcomes"][k]["broken"]), None)
            if first is None:
                robust += 1
            else:
                broken[report["attacks"][first]["name"]] += 1
        out.append({"norm": w["norm"], "eps": w["eps"], "misclassified": misclassified, "broken": broken,
                    "robust": robust})
    return out


def _stage_figure(report: Dict[str, Any]) -> Any:
    """Stacked bars, one per threat model: the samples each stage broke, out of all ``n`` (None without samples).

    Only the segments that occur are drawn and listed in the legend. This
    replaces a histogram of perturbation norms, which for L-inf attacks is a
    single spike at epsilon (they use the whole budget).
    """
    import matplotlib.pyplot as plt

    counts = stage_counts(report)
    n = int(report["n"])
    if not counts or n == 0:
        return None
    names = list(dict.fromkeys(name for c in counts for name in c["broken"]))
    segments = [("misclassified clean", [c["misclassified"] for c in counts], "0.75")]
    tab10 = plt.get_cmap("tab10")
    palette = [tab10(i) for i in (0, 1, 3, 4, 5, 6, 8, 9)]  # green is robust, grey misclassified
    segments += [(f"broken by {name}", [c["broken"].get(name, 0) for c in counts], palette[i % len(palette)])
                 for i, name in enumerate(names)]
    segments.append(("robust", [c["robust"] for c in counts], tab10(2)))
    ticks = [f"{c['norm']} eps={c['eps']:g}" if c["eps"] is not None else f"{c['norm']} (unbounded)" for c in counts]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(counts) + 2.5), 4))
    bottom = np.zeros(len(counts))
    for label, values, colour in segments:
        values = np.asarray(values, float)
        if not values.any():  # never drawn: not in the legend either
            continue
        ax.bar(range(len(counts)), values, bottom=bottom, color=colour, label=label, width=0.6)
        bottom += values
    ax.set_xticks(range(len(counts)))
    ax.set_xticklabels(ticks, fontsize=8)
    ax.set_ylim(0, n)
    ax.set_ylabel(f"samples (of all {n})")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("What each stage broke (cascade: each stage attacks only the samples still robust)", fontsize=9)
    return fig


def _norm_figure(report: Dict[str, Any]) -> Any:
    """Histograms of the perturbation size of successful adversarial examples, where it says something.

    A bounded stage is shown as the fraction of its epsilon used (axis 0 to 1)
    and only when some broken sample used less than 99% of it; L-inf attacks
    nearly always use the whole budget, which :func:`_stage_figure` shows
    better. An unbounded (minimum-norm) stage is shown in the norm's own units,
    from 0. None when no stage qualifies.
    """
    import matplotlib.pyplot as plt

    bounded, unbounded = [], []
    for k, a in enumerate(report["attacks"]):
        values = np.array([s["outcomes"][k]["distance"] for s in report["per_sample"]
                           if s["outcomes"][k]["broken"] and s["outcomes"][k]["distance"] is not None], float)
        if not values.size:
            continue
        if a["eps"] is None:
            unbounded.append((f"{a['name']} {a['norm']} (n={values.size})", values))
        elif a["eps"] > 0 and (values / a["eps"] < 0.99).any():
            bounded.append((f"{a['name']} {a['norm']} eps={a['eps']:g} (n={values.size})", values / a["eps"]))
    panels = [p for p in ((bounded, "fraction of epsilon used", (0.0, 1.05)),
                          (unbounded, "perturbation norm", None)) if p[0]]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (series, xlabel, limits) in zip(axes[0], panels):
        top = max(float(v.max()) for _, v in series)
        bins = np.linspace(0.0, 1.0, 21) if limits else np.linspace(0.0, top * 1.05 or 1.0, 21)
        for label, values in series:
            ax.hist(values, bins=bins, alpha=0.5, label=label)
        ax.set_xlim(limits if limits else (0.0, bins[-1]))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("successful adversarial examples")
        ax.legend(fontsize=8)
    fig.suptitle("Perturbation size of the successful adversarial examples", fontsize=9)
    return fig


def class_label(value: int, class_names: Optional[Sequence[str]]) -> str:
    """``'3'``, or ``'3 (tench)'`` when the model's class names are known."""
    value = int(value)
    if class_names is None or not 0 <= value < len(class_names):
        return str(value)
    return f"{value} ({class_names[value]})"


def grid_budget(report: Dict[str, Any], examples: Dict[str, np.ndarray]) -> str:
    """The threat model(s) of the image grid's examples, e.g. ``"linf eps=0.3"``."""
    attacks = report["attacks"]
    seen = dict.fromkeys((attacks[int(k)]["norm"], attacks[int(k)]["eps"]) for k in examples["attack"])
    return ", ".join(f"{norm} eps={eps:g}" if eps is not None else f"{norm} (unbounded)" for norm, eps in seen)


def _grid_figure(report: Dict[str, Any], examples: Dict[str, np.ndarray], bounds: tuple) -> Any:
    """Clean / adversarial / amplified difference per example, titled with the budget (None when there is none)."""
    import matplotlib.pyplot as plt

    count = len(examples["y"])
    if count == 0 or examples["x"].shape[1] not in (1, 3):
        return None
    low, high = bounds
    class_names = report.get("class_names")
    attacks = report["attacks"]

    def show(ax: Any, img: np.ndarray, title: str) -> None:
        img = np.clip((img - low) / (high - low), 0, 1).transpose(1, 2, 0)
        ax.imshow(img[:, :, 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
        ax.axis("off")

    fig, axes = plt.subplots(count, 3, figsize=(5, 1.8 * count + 0.4), squeeze=False)
    for i in range(count):
        x, adv = examples["x"][i], examples["x_adv"][i]
        diff = adv - x
        scale = float(np.abs(diff).max()) or 1.0
        attack = attacks[int(examples["attack"][i])]
        show(axes[i][0], x, f"#{int(examples['index'][i])} label {class_label(examples['y'][i], class_names)}")
        show(axes[i][1], adv, f"{attack['name']} eps={_eps_text(attack['eps'])}: pred "
                              f"{class_label(examples['pred'][i], class_names)}")
        show(axes[i][2], low + (high - low) * (0.5 + 0.5 * diff / scale), f"diff x{0.5 / scale:.0f}")
    fig.suptitle(f"Adversarial examples at {grid_budget(report, examples)}", fontsize=9)
    fig.tight_layout()
    return fig


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
