"""benchmarks/bench_training.py: the robust figures of the training table come from a named ``evaluate`` recipe.

Issue 16, deliverable 6. The expected stage labels and settings below are written out by hand from the recipe's
definition (APGD-CE then APGD-T per eps), not read from the script under test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_training  # noqa: E402

from gluon_robust.data import load_data  # noqa: E402
from gluon_robust.evaluation import evaluate  # noqa: E402
from gluon_robust.model import load_classifier  # noqa: E402


def test_robust_columns_are_the_named_recipes_worst_case(tmp_path):
    """A tiny real run: the row's robust figures are ``evaluate``'s worst case under apgd-lite, stage for stage."""
    bench_training.main(["--methods", "undefended", "--eval-limit", "8", "--recipe", "apgd-lite",
                         "--pgd-steps", "0", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "training.json").read_text())
    assert result["recipe"] == "apgd-lite"
    assert result["header"] == ["method", "clean", "apgd-lite @0.1", "apgd-lite @0.3", "train time"]
    assert "no fab-t" in result["differs_from_standard"] and "no square" in result["differs_from_standard"]
    (row,) = result["rows"]
    assert [(s["label"], s["eps"]) for s in row["stages"]] == [
        ("apgd-ce", 0.1), ("apgd-t", 0.1), ("apgd-ce", 0.3), ("apgd-t", 0.3)]
    assert "pgd@0.1" not in row and result["targets_met"] == {}
    # the same figures as `gluon-robust evaluate --recipe apgd-lite` on the same digits and seed
    report = evaluate(load_classifier(bench_training.REFERENCE), load_data("mnist-sample", split="test", limit=8),
                      recipe="apgd-lite", eps=[0.1, 0.3], batch_size=250, seed=0, progress=False, max_examples=0)
    assert row["clean"] == report["clean_accuracy"]
    assert [row["robust@0.1"], row["robust@0.3"]] == [w["robust_accuracy"] for w in report["worst_case"]]
    assert row["robust@0.1"] <= row["clean"]


def test_recipe_flag_reaches_evaluate_and_pgd_is_a_separate_run(tmp_path, monkeypatch):
    """--recipe is what evaluate() receives; the PGD columns are labelled PGD-NxR and run on their own."""
    calls = []

    def fake_evaluate(model, source, **kwargs):
        calls.append(kwargs)
        n = len(source)
        return {"clean_accuracy": 1.0, "recipe": kwargs["recipe"], "seconds": 0.0, "warnings": [],
                "worst_case": [{"norm": "linf", "eps": e, "robust_accuracy": 0.5} for e in kwargs["eps"]],
                "attacks": [{"name": "x", "eps": e, "robust_accuracy_after": 0.5, "seconds": 0.0}
                            for e in kwargs["eps"]], "n": n}

    monkeypatch.setattr(bench_training, "evaluate_recipe", fake_evaluate)
    bench_training.main(["--methods", "undefended", "--eval-limit", "4", "--recipe", "standard-lite",
                         "--pgd-steps", "2", "--restarts", "1", "--eps", "0.3", "--out", str(tmp_path)])
    assert [c["recipe"] for c in calls] == ["standard-lite"] and calls[0]["eps"] == [0.3]
    result = json.loads((tmp_path / "training.json").read_text())
    assert result["header"] == ["method", "clean", "standard-lite @0.3", "PGD-2x1 @0.3", "train time"]
    (row,) = result["rows"]
    assert row["robust@0.3"] == 0.5  # the recipe's figure, not PGD's
    assert 0.0 <= row["pgd@0.3"] <= 1.0 and result["pgd"] == "PGD-2x1"


def test_table_never_says_worst():
    rows = [{"method": "pgd-at", "clean": 0.984, "robust@0.3": 0.5, "pgd@0.3": 0.894, "train_seconds": 517.0}]
    header, body = bench_training.table(rows, [0.3], "apgd-lite", 40, 2)
    assert header == ["method", "clean", "apgd-lite @0.3", "PGD-40x2 @0.3", "train time"]
    assert body == [["pgd-at", "98.4%", "50.0%", "89.4%", "517 s"]]
    assert not any("worst" in h.lower() or "autoattack" in h.lower() for h in header)


def test_unknown_recipe_is_a_one_line_error_naming_the_flag(capsys):
    with pytest.raises(SystemExit):
        bench_training.parse_args(["--recipe", "autoattack-ish"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--recipe" in err and "autoattack-ish" in err and "apgd-lite" in err


def test_update_refuses_a_file_of_another_recipe(tmp_path, monkeypatch):
    # the same clean revision on both sides, so that only the recipe differs
    revision = {"commit": "0" * 40, "dirty": False, "code": "1" * 64, "code_dirty": False}
    monkeypatch.setattr(bench_training, "REVISION", revision)
    (tmp_path / "training.json").write_text(json.dumps({
        "revision": revision, "eval_digits": 8, "recipe": "standard-lite", "pgd_steps": 40, "restarts": 2, "seed": 0, "eps": [0.1, 0.3],
        "limit": None, "epochs_override": None, "rows": [], "runs": {}}))
    args = bench_training.parse_args(["--recipe", "apgd-lite", "--out", str(tmp_path), "--update"])
    with pytest.raises(SystemExit, match="recipe"):
        bench_training.previous_results(args, ["pgd-at"], 8)


def test_reuse_trained_refuses_a_model_trained_with_other_options(tmp_path):
    from gluon_robust.training.loop import TrainConfig

    options = dict(bench_training.COMMON, **bench_training.RECIPES["fast-at"])
    config = TrainConfig(save_dir=str(tmp_path), name="fast-at", progress=False, **options)
    assert bench_training.trained("fast-at", config) is None  # nothing there: train
    other = dict(config.fingerprint(), epochs=1)
    (tmp_path / "metrics.json").write_text(json.dumps({"config": other, "finished": True, "train_seconds": 1.0}))
    with pytest.raises(SystemExit, match="epochs"):
        bench_training.trained("fast-at", config)
    (tmp_path / "metrics.json").write_text(json.dumps({"config": config.fingerprint(), "finished": False}))
    with pytest.raises(SystemExit, match="unfinished"):
        bench_training.trained("fast-at", config)
