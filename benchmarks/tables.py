#!/usr/bin/env python
"""README tables from the committed benchmark results (``benchmarks/results/*.json``).

``python benchmarks/tables.py --readme README.md`` replaces the text between
``<!-- bench-tables:start -->`` and ``<!-- bench-tables:end -->`` with the
tables of the results files present; ``--check`` exits 1 instead when the
README's tables differ from the JSON. Every table names its file, the git
revision it was measured at (``+dirty`` when the tree differed from it) and the
machine's core count. Without ``--readme`` the tables go to standard output.

Imports neither MXNet nor gluon_robust.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import setup_logging  # noqa: E402

START = "<!-- bench-tables:start -->"
END = "<!-- bench-tables:end -->"

logger = logging.getLogger("benchmarks.tables")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def revision_text(data: Dict[str, Any]) -> str:
    """``abc1234``, ``abc1234+dirty`` or ``unknown revision`` from a results file's provenance."""
    revision = data.get("revision")
    if isinstance(revision, dict) and revision.get("commit"):
        return revision["commit"][:7] + ("" if revision.get("dirty") is False else "+dirty")
    if isinstance(revision, str) and revision:  # older files: a short hash, maybe "+dirty"
        return revision
    return "unknown revision"


def source_line(name: str, data: Dict[str, Any]) -> str:
    """Where a table comes from: file, revision, cores, and the versions that matter."""
    cpus = (data.get("machine") or {}).get("cpus") or (data.get("meta") or {}).get("cpu_count")
    versions = data.get("versions") or {}
    shown = ", ".join(f"{k} {versions[k]}" for k in ("mxnet", "torch", "pyautoattack") if k in versions)
    return (f"From `benchmarks/results/{name}.json`, revision {revision_text(data)}, "
            f"{cpus if cpus else '?'} cores{', ' + shown if shown else ''}.")


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


#: What a full ``make bench-autoattack`` measures (vs_autoattack.py's defaults): (model, eps).
AUTOATTACK_FULL = tuple((m, e) for m in ("mnist_resnet20", "mnist_resnet20_pgdat") for e in (0.1, 0.3))


def autoattack_table(data: Dict[str, Any], done_elsewhere: frozenset = frozenset()) -> str:
    """gluon_robust's ``standard`` against reference AutoAttack: robust accuracy after each stage, agreement, time."""
    settings = data.get("settings", {})
    header = ["model", "ε", "clean", "stage", "AutoAttack", "gluon_robust"]
    rows: List[List[object]] = []
    summary: List[List[object]] = []
    for entry in data.get("results", {}).values():
        ref = {s["stage"]: s for s in entry["reference"]["stages"]}
        ours = {s["stage"]: s for s in entry["gluon_robust"]["stages"]}
        for stage in [s["stage"] for s in entry["reference"]["stages"]]:
            rows.append([entry["model"], f"{entry['eps']:g}", _pct(entry["clean_accuracy"]), stage,
                         _pct(ref[stage]["robust_accuracy_after"]),
                         _pct(ours[stage]["robust_accuracy_after"]) if stage in ours else "–"])
        summary.append([entry["model"], f"{entry['eps']:g}", _pct(entry["reference"]["robust_accuracy"]),
                        _pct(entry["gluon_robust"]["robust_accuracy"]), _pct(entry["agreement"]),
                        f"{entry['reference']['seconds']:.0f} s", f"{entry['gluon_robust']['process_seconds']:.0f} s",
                        f"{entry['time_ratio']:.2f}", f"{entry['attack_time_ratio']:.2f}",
                        f"{entry['cpu_time_ratio']:.2f}" if "cpu_time_ratio" in entry else "–"])
    if not summary:
        return ""
    n = {e["n"] for e in data["results"].values()}
    intro = (f"Reference AutoAttack (`pyautoattack`, PyTorch CPU, `version='standard'`, L∞) against "
             f"`evaluate --recipe standard` on the same {'/'.join(str(v) for v in sorted(n))} held-out digits, "
             f"{settings.get('threads', '?')} thread each. Robust accuracy after each stage, over all digits:")
    outro = ("Time: wall time of the `run_standard_evaluation` call against the whole `evaluate` process "
             "(start-up and report included), the attack stages alone, and CPU time (fairest on a shared machine).")
    summary_header = ["model", "ε", "AutoAttack", "gluon_robust", "same verdict", "AutoAttack time",
                      "evaluate time", "wall ours/ref", "attacks ours/ref", "CPU ours/ref"]
    done = {(e["model"], float(e["eps"])) for e in data["results"].values()} | set(done_elsewhere)
    missing = [f"{m} at ε {e:g}" for m, e in AUTOATTACK_FULL if (m, e) not in done]
    if missing and settings.get("limit") == 200:
        outro += f" Not measured (the run was stopped): {', '.join(missing)}."
    return "\n\n".join([intro, markdown_table(header, rows), markdown_table(summary_header, summary), outro])


def art_table(data: Dict[str, Any]) -> str:
    """PGD against IBM ART's MXNet classifier."""
    results = data.get("results", {})
    rows = [[name, f"{r['seconds']:.1f} s", _pct(r["robust_accuracy"])] for name, r in results.items()
            if isinstance(r, dict)]
    if not rows:
        return ""
    intro = (f"PGD L∞ (ε {data.get('eps')}, {data.get('steps')} steps, {data.get('n')} digits) against ART "
             f"{results.get('art', {}).get('version', '?')} (`make bench-art`); speed-up "
             f"{results.get('speedup', float('nan')):.1f}×:")
    return "\n\n".join([intro, markdown_table(["PGD L∞", "time", "robust accuracy"], rows)])


def memory_table(data: Dict[str, Any]) -> str:
    """Peak resident memory of ``evaluate --recipe standard`` at 224x224 against the number of images."""
    rows = [[f"{r['n']:,}", r.get("budget", "–"), f"{r['peak_rss_mib']:.0f} MiB", f"{r['images_if_held_mib']:.0f} MiB",
             r["attacked"], _pct(r.get("clean_accuracy"))]
            for r in data.get("evaluate_standard", [])]
    if not rows:
        return ""
    intro = ("Peak resident memory of `evaluate --recipe standard` on n images of 3x224x224 (`bench_memory.py`; "
             "the same images are attacked whatever n, so the rows differ only in the data streamed), against "
             "what the images alone would take if they were held in memory:")
    header = ["images", "--max-memory", "peak RSS", "images if held", "attacked", "clean accuracy"]
    return "\n\n".join([intro, markdown_table(header, rows)])


def revisions_table(data: Dict[str, Any]) -> str:
    """The same workloads timed under two revisions, interleaved (``bench_revisions.py``)."""
    rows = [[r["workload"], f"{r['baseline_seconds']:.2f} s", f"{r['this_seconds']:.2f} s", f"{r['ratio']:.2f}"]
            for r in data.get("rows", [])]
    if not rows:
        return ""
    base, this = data.get("baseline_revision", "?")[:7], data.get("this_revision", "?")[:7]
    load = data.get("load_average") or [0.0]
    intro = (f"The same workloads on the bundled `mnist_resnet20` (64 digits, 1 thread, one fresh process each, "
             f"{data.get('repeats', '?')} interleaved rounds, medians) at revision {this} against {base} "
             f"(`bench_revisions.py`; load average {min(load):.1f} to {max(load):.1f}):")
    return "\n\n".join([intro, markdown_table(["workload", base, this, "ratio"], rows)])


def relu6_table(data: Dict[str, Any]) -> str:
    """The folded network with GluonCV's ``clip`` ReLU6 against the fold-time ``minimum(relu(x), 6)``."""
    medians = data.get("ms_per_image") or {}
    if not medians:
        return ""
    ratio = data.get("ratio_rewritten_over_clip", {})
    rows = [[label, f"{m['step']:.1f}", f"{m['forward']:.1f}"] for label, m in medians.items()]
    rows.append(["ratio", f"{ratio.get('step', float('nan')):.2f}", f"{ratio.get('forward', float('nan')):.2f}"])
    same = "the same" if data.get("same_logits") and data.get("same_input_gradient") else "NOT the same"
    intro = (f"Folded `{data.get('model')}` at {'x'.join(map(str, data.get('input', [])))}, batch "
             f"{data.get('batch_size')}, {data.get('threads') or 'default'} thread(s), with ReLU6 as GluonCV's `clip` "
             f"and as `minimum(relu(x), 6)` (`bench_relu6.py`, {data.get('repeats')} interleaved rounds, medians, "
             f"ms per image); logits and input gradients were {same} bit for bit:")
    return "\n\n".join([intro, markdown_table(["ReLU6 as", "forward + input backward", "forward"], rows)])


def cluster_table(data: Dict[str, Any]) -> str:
    """``evaluate`` in one process against ``--cluster local:N`` (``bench_cluster.py``)."""
    rows = [[r["config"], f"{r['wall_s']:.0f} s", f"{r['speedup']:.2f}x", f"{r['cpu_s']:.0f} s",
             "yes" if r["report_equal"] else "NO"] for r in data.get("results", [])]
    if not rows:
        return ""
    load = data.get("load_average_at_start")
    intro = (f"`evaluate --recipe {data.get('recipe')} --eps {data.get('eps')}` on {data.get('limit')} digits of "
             f"`{data.get('config')}` (batches of {data.get('batch_size')}), in one process and on local Dask "
             f"clusters of single-threaded workers, on {data.get('cores')} cores (`bench_cluster.py`; load average "
             f"{load if load is None else f'{load:.1f}'} at the start). Report equal: `report.json` (timings aside) "
             "and `examples.npz` identical to the one-process run's:")
    return "\n\n".join([intro, markdown_table(["configuration", "wall", "speed-up", "CPU", "report equal"], rows)])


def demo_table(data: Dict[str, Any]) -> str:
    """``gluon-robust demo``'s wall time against its compute floor (``bench_demo.py``)."""
    rows = [[r["code"], r["workers"], f"{r['wall_s']:.0f} s", f"{r['floor_s']:.0f} s",
             f"{r['wall_s'] / r['floor_s']:.2f}", f"{r['cpu_s']:.0f} s", "yes" if r["same_figures"] else "NO"]
            for r in data.get("results", [])]
    if not rows:
        return ""
    load = data.get("load_average_at_start")
    intro = (f"`gluon-robust demo` (what `make demo` runs after the install) on {data.get('cores')} cores "
             f"(`bench_demo.py`, load average {load if load is None else f'{load:.1f}'} at the start). Floor: the "
             "attack stages' own seconds divided by the workers, the wall time if nothing but the attacks took "
             "time and they were spread perfectly; same figures: the contrast table equal to the first run's:")
    return "\n\n".join([intro, markdown_table(["code", "workers", "wall", "floor", "wall/floor", "CPU",
                                                 "same figures"], rows)])


def allocator_table(data: Dict[str, Any]) -> str:
    """glibc's allocator as ``gluon_robust.allocator`` sets it against glibc's defaults (``bench_allocator.py``)."""
    models = data.get("models") or {}
    if not models:
        return ""
    rows = [[f"`{name}`", "x".join(map(str, m.get("input", []))), f"{m['system']['ms_per_image_step']:.1f}",
             f"{m['tuned']['ms_per_image_step']:.1f}", f"{m['ratio_tuned_over_system']['ms_per_image_step']:.2f}",
             f"{m['system']['minor_faults_per_step']:,.0f} / {m['tuned']['minor_faults_per_step']:,.0f}",
             f"{m['system']['peak_rss_mb']:.0f} / {m['tuned']['peak_rss_mb']:.0f}",
             "yes" if m.get("same_numbers") else "NO"] for name, m in models.items()]
    load = data.get("load_average_at_start") or [None]
    intro = (f"One forward and input-backward pass (an attack's inner step) of folded GluonCV nets at batch "
             f"{data.get('batch_size')}, {data.get('threads')} thread, each setting in its own process "
             f"(`bench_allocator.py`, {data.get('rounds')} alternating rounds of {data.get('steps')} steps, medians; "
             f"load average {load[0] if load[0] is None else f'{load[0]:.1f}'} at the start). glibc's defaults "
             "(`GLUON_ROBUST_ALLOCATOR=system`) against the settings `import gluon_robust` makes "
             "(`gluon_robust/allocator.py`); same numbers: logits and input gradients equal bit for bit in every run:")
    return "\n\n".join([intro, markdown_table(
        ["model", "input", "glibc ms/img-step", "tuned ms/img-step", "ratio", "page faults/step (glibc / tuned)",
         "peak RSS MB (glibc / tuned)", "same numbers"], rows)])


#: The results files with a README table, in the order they appear.
RENDERERS: Dict[str, Callable[[Dict[str, Any]], str]] = {
    "autoattack": autoattack_table,
    "art": art_table,
    "memory": memory_table,
    "revisions": revisions_table,
    "demo": demo_table,
    "relu6": relu6_table,
    "allocator": allocator_table,
    "bench_cluster": cluster_table,
}


def provenance_table(results_dir: str | Path) -> str:
    """One row per results file: its revision, the core count and the package versions."""
    rows = []
    for path in sorted(Path(results_dir).glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        meta = data.get("meta") or {}  # zoo_matrix.json keeps its provenance there
        merged = {"revision": data.get("revision", meta.get("revision")),
                  "versions": data.get("versions") or meta.get("versions") or {}}
        cpus = (data.get("machine") or {}).get("cpus") or meta.get("cpu_count")
        versions = merged["versions"]
        shown = ", ".join(f"{k} {versions[k]}" for k in ("gluon_robust", "mxnet", "torch") if k in versions)
        rows.append([f"`{path.name}`", revision_text(merged), cpus or "?", shown or "?"])
    if not rows:
        return ""
    return "Every results file:\n\n" + markdown_table(["file", "revision", "cores", "versions"], rows)


def _autoattack_done(results_dir: str | Path) -> frozenset:
    """The (model, eps) pairs measured on 200 digits in any of the AutoAttack results files (a full run may be
    split over several, one per model and eps)."""
    done = set()
    for path in Path(results_dir).glob("autoattack*.json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("settings", {}).get("limit") == 200:
            done |= {(e["model"], float(e["eps"])) for e in data.get("results", {}).values()}
    return frozenset(done)


def render(results_dir: str | Path) -> str:
    """The Markdown of every results file present that has a renderer, each followed by its provenance,
    then the provenance of every results file."""
    parts = []
    for name, renderer in RENDERERS.items():
        # NAME.json, then partial runs kept beside it as NAME-SUFFIX.json
        for path in [Path(results_dir) / f"{name}.json", *sorted(Path(results_dir).glob(f"{name}-*.json"))]:
            if not path.is_file():
                continue
            data = json.loads(path.read_text(encoding="utf-8"))
            body = (autoattack_table(data, _autoattack_done(results_dir)) if renderer is autoattack_table
                    else renderer(data))
            if body:
                parts.append(f"{body}\n\n{source_line(path.stem, data)}")
    files = provenance_table(results_dir)
    if files:
        parts.append(files)
    return "\n\n".join(parts) if parts else "No results yet: run `make bench`."


def replace_between_markers(text: str, body: str) -> str:
    """``text`` with everything between :data:`START` and :data:`END` replaced by ``body``."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"the README must hold {START} once, followed by {END} once")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{body}\n{END}{tail}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(HERE / "results"), help="directory of the results JSON")
    parser.add_argument("--readme", help="README whose tables (between the markers) are replaced")
    parser.add_argument("--check", action="store_true", help="with --readme: exit 1 if its tables are out of date")
    args = parser.parse_args(argv)
    setup_logging()
    body = render(args.results)
    if not args.readme:
        sys.stdout.write(body + "\n")
        return 0
    readme = Path(args.readme)
    text = readme.read_text(encoding="utf-8")
    try:
        new = replace_between_markers(text, body)
    except ValueError as err:
        logger.error("--readme %s: %s", readme, err)
        return 2
    if args.check:
        if new != text:
            logger.error("%s: the benchmark tables differ from %s; run python benchmarks/tables.py --readme %s",
                         readme, args.results, readme)
            return 1
        return 0
    if new != text:
        tmp = readme.with_name(f".{readme.name}.tmp")
        tmp.write_text(new, encoding="utf-8")
        tmp.replace(readme)
        logger.info("updated the benchmark tables in %s", readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
