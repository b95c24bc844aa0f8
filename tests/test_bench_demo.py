"""bench_demo.py: its flags, and the attack seconds it reads from a report (the floor's numerator)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_demo  # noqa: E402


@pytest.mark.parametrize("flags, named", [(["--workers", "0"], "--workers"), (["--workers", "two"], "two"),
                                          (["--repeats", "0"], "--repeats")])
def test_bad_flags_are_refused_naming_flag_and_value(flags, named, capsys):
    with pytest.raises(SystemExit):
        bench_demo.parse_args(flags)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert named in err and flags[1] in err


def test_workers_are_read_in_order():
    assert bench_demo.parse_args(["--workers", "2,1,4"]).workers == [2, 1, 4]


def test_attack_seconds_sum_every_stage_and_skip_missing_timers():
    report = {"attacks": [{"name": "pgd-40", "seconds": 12.5}, {"name": "square", "seconds": 100.25},
                          {"name": "apgd-t", "seconds": None}]}
    assert bench_demo.attack_seconds(report) == 112.75
    assert bench_demo.attack_seconds({}) == 0.0
