"""The plots of the HTML evaluation report, as matplotlib figures (Agg backend) and base64 PNG.

Robust accuracy against epsilon after each stage, stacked bars of what each
stage broke out of all samples, histograms of the perturbation size of
successful examples where it varies (as a fraction of epsilon), and a grid of
clean / adversarial / amplified difference images with their predicted labels.
Each figure is computed from ``report.json`` (plus ``examples.npz`` for the grid).
"""

from __future__ import annotations

import base64
import io
from collections import defaultdict
from typing import Any, Dict, List

import numpy as np

from .report_data import _eps_text, class_label, grid_budget, stage_accuracies, stage_counts

__all__: List[str] = []


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
