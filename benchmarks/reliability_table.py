"""Turn the reliability log of a fuzz run into committed JSON and the README's reliability table.

``make reliability`` runs the bad-input, file-safety, fault and fuzz tests
with a large Hypothesis budget, each case appending ``{"class", "handled"}``
to a log (see ``tests/reliability.py``); this script counts the log per
class, writes ``benchmarks/results/reliability.json`` (with the git revision,
the core count and the versions) and replaces the table between the
``reliability-table`` markers of README.md::

    python benchmarks/reliability_table.py --log runs/reliability.jsonl --out benchmarks/results --readme README.md
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import setup_logging, write_results  # noqa: E402

from gluon_robust.io import atomic_write_text  # noqa: E402

START, END = "<!-- reliability-table:start -->", "<!-- reliability-table:end -->"
logger = logging.getLogger("benchmarks")


def count(log: Path) -> List[Dict[str, object]]:
    """One row per class of bad input or fault: cases tried and handled, in first-seen order."""
    tried: Counter = Counter()
    handled: Counter = Counter()
    order: List[str] = []
    for line in log.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        kind = str(entry["class"])
        if kind not in tried:
            order.append(kind)
        tried[kind] += 1
        handled[kind] += bool(entry["handled"])
    return [{"class": k, "tried": tried[k], "handled": handled[k]} for k in order]


def markdown(rows: List[Dict[str, object]]) -> str:
    """The README table; the last row sums every class."""
    lines = ["| class of bad input or fault | cases tried | handled | share |", "|---|---|---|---|"]
    total_tried = sum(int(r["tried"]) for r in rows)
    total_handled = sum(int(r["handled"]) for r in rows)
    for r in rows + [{"class": "**all**", "tried": total_tried, "handled": total_handled}]:
        share = 100.0 * int(r["handled"]) / max(int(r["tried"]), 1)
        lines.append(f"| {r['class']} | {int(r['tried']):,} | {int(r['handled']):,} | {share:.1f} % |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", required=True, help="the JSON-lines log the tests wrote")
    parser.add_argument("--out", default="benchmarks/results", help="where reliability.json goes")
    parser.add_argument("--readme", help="README whose table (between the markers) is replaced")
    parser.add_argument("--scale", type=int, help="the GLUON_ROBUST_FUZZ_SCALE of the run, for the record")
    args = parser.parse_args()
    setup_logging()
    rows = count(Path(args.log))
    if not rows:
        logger.error("%s holds no cases", args.log)
        return 1
    write_results(args.out, "reliability", {"rows": rows, "fuzz_scale": args.scale},
                  [[r["class"], r["tried"], r["handled"]] for r in rows], ["class", "tried", "handled"])
    if args.readme:
        readme = Path(args.readme)
        text = readme.read_text(encoding="utf-8")
        if START not in text or END not in text:
            logger.error("%s has no %s ... %s markers", readme, START, END)
            return 1
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        atomic_write_text(readme, f"{head}{START}\n{markdown(rows)}\n{END}{tail}")
        logger.info("updated the table in %s", readme)
    return 0 if all(r["tried"] == r["handled"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
