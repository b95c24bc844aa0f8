"""Run golden cases in a clean process: ``python tests/golden/worker.py OUTDIR`` (started by tests/test_golden.py).

Reads one case name per line on stdin, runs it, writes its arrays to
``OUTDIR/<case>.npz`` and answers one JSON line on stdout:
``{"case": ..., "ok": true}`` or ``{"case": ..., "ok": false, "error": traceback}``.
Anything else the code prints goes to stderr. A separate process gives
every case the same environment (:mod:`env`: one OpenMP thread) and keeps it
apart from the global state the rest of the test suite leaves behind.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from env import golden_environ, is_golden_environ  # noqa: E402


def main() -> None:
    if not is_golden_environ():
        os.execve(sys.executable, [sys.executable, *sys.argv], golden_environ())
    out_dir = Path(sys.argv[1])
    reply = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not break the protocol
    import numpy as np

    from cases import CASES

    for line in sys.stdin:
        case = line.strip()
        if not case:
            continue
        try:
            np.savez_compressed(out_dir / f"{case}.npz", **CASES[case]())
            answer = {"case": case, "ok": True}
        except BaseException:  # noqa: BLE001 - reported to the test, which fails with it
            answer = {"case": case, "ok": False, "error": traceback.format_exc()}
        reply.write(json.dumps(answer) + "\n")
        reply.flush()


if __name__ == "__main__":
    main()
