"""Benchmark results say where they come from, and never mix code versions.

Oracles: the revision is read with plain ``git`` commands here, not through
the code under test; the tables are checked cell by cell against numbers
written into a constructed JSON; the refusal is checked on files whose
revision the test sets.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import common  # noqa: E402
import tables  # noqa: E402

CLEAN_A = {"commit": "a" * 40, "dirty": False}
CLEAN_B = {"commit": "b" * 40, "dirty": False}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_write_results_records_revision_cores_and_versions(tmp_path):
    path = common.write_results(str(tmp_path), "speed", {"rows": [1, 2]}, [["x", 1]], ["what", "n"])
    data = json.loads(path.read_text())
    assert data["rows"] == [1, 2]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0:
        assert data["revision"]["commit"] == head.stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
        assert data["revision"]["dirty"] is bool(status.strip())
    assert data["machine"]["cpus"] == os.cpu_count()
    assert data["versions"]["numpy"] == __import__("numpy").__version__
    assert data["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))


def test_write_results_keeps_the_revision_taken_at_start(tmp_path):
    data = json.loads(common.write_results(str(tmp_path), "x", {}, [], ["a"], revision=CLEAN_A).read_text())
    assert data["revision"] == CLEAN_A


def test_git_revision_sees_a_dirty_tree(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "f.txt").write_text("1")
    _git(tmp_path, "add", "f.txt")
    _git(tmp_path, "commit", "-q", "-m", "one")
    commit = _git(tmp_path, "rev-parse", "HEAD")
    first = common.git_revision(tmp_path)
    assert (first["commit"], first["dirty"], first["code_dirty"]) == (commit, False, False)
    (tmp_path / "f.txt").write_text("2")
    assert common.git_revision(tmp_path)["dirty"] is True
    assert common.git_revision(tmp_path)["code_dirty"] is False  # f.txt is not code
    _git(tmp_path, "checkout", "-q", "f.txt")
    (tmp_path / "new.txt").write_text("untracked")
    assert common.git_revision(tmp_path)["dirty"] is True


def test_code_digest_ignores_results_and_follows_the_code(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "gluon_robust").mkdir()
    (tmp_path / "gluon_robust" / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "code")
    listing = _git(tmp_path, "ls-tree", "-r", "HEAD", "--", "gluon_robust") + "\n"
    before = common.git_revision(tmp_path)
    assert before["code"] == hashlib.sha256(listing.encode()).hexdigest()
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "r.json").write_text("{}")
    (tmp_path / "README.md").write_text("table")
    assert common.git_revision(tmp_path)["code_dirty"] is False
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "results")
    after = common.git_revision(tmp_path)
    assert after["commit"] != before["commit"] and after["code"] == before["code"]
    assert common.same_revision(before, after)
    (tmp_path / "gluon_robust" / "a.py").write_text("x = 2\n")
    edited = common.git_revision(tmp_path)
    assert edited["code_dirty"] is True and not common.same_revision(after, edited)
    _git(tmp_path, "commit", "-q", "-am", "code change")
    changed = common.git_revision(tmp_path)
    assert changed["code"] != before["code"] and not common.same_revision(before, changed)


def test_git_revision_outside_a_checkout(tmp_path):
    assert set(common.git_revision(tmp_path).values()) == {None}


@pytest.mark.parametrize("theirs, ours", [
    (CLEAN_A, CLEAN_B),                                  # another commit
    ({**CLEAN_A, "dirty": True}, CLEAN_A),              # same commit, but the old file came from a dirty tree
    (CLEAN_A, {**CLEAN_A, "dirty": True}),              # this run is dirty
    (None, CLEAN_A),                                     # an old file without a revision
    ({**CLEAN_A, "code": "c1", "code_dirty": False}, {**CLEAN_A, "code": "c2", "code_dirty": False}),
    ({**CLEAN_A, "code": "c1", "code_dirty": True}, {**CLEAN_B, "code": "c1", "code_dirty": False}),
])
def test_update_refuses_results_of_another_revision(tmp_path, theirs, ours):
    payload = {"results": {"m@0.1": 1}}
    if theirs is not None:
        payload["revision"] = theirs
    (tmp_path / "bench.json").write_text(json.dumps(payload))
    with pytest.raises(SystemExit) as err:
        common.load_results(tmp_path, "bench", ours)
    message = str(err.value)
    assert message.startswith("--update:") and "bench.json" in message and "\n" not in message


def test_update_keeps_results_of_the_same_clean_revision(tmp_path):
    common.write_results(str(tmp_path), "bench", {"results": {"m@0.1": 1}}, [], ["a"], revision=CLEAN_A)
    assert common.load_results(tmp_path, "bench", dict(CLEAN_A))["results"] == {"m@0.1": 1}
    assert common.load_results(tmp_path, "absent", CLEAN_A) == {}
    # another commit of the same code (only results or README committed since): kept
    code = {"code": "c1", "code_dirty": False}
    common.write_results(str(tmp_path), "bench", {"results": {"m@0.3": 2}}, [], ["a"], revision={**CLEAN_A, **code})
    assert common.load_results(tmp_path, "bench", {**CLEAN_B, "dirty": True, **code})["results"] == {"m@0.3": 2}


def test_bench_training_update_refuses_another_revision(tmp_path, monkeypatch):
    import bench_training

    common.write_results(str(tmp_path), "training", {"rows": [], "runs": {}}, [], ["a"], revision=CLEAN_A)
    monkeypatch.setattr(bench_training, "REVISION", CLEAN_B)
    args = SimpleNamespace(out=str(tmp_path), pgd_steps=40, restarts=2, apgd_steps=100, limit=None, epochs=None)
    with pytest.raises(SystemExit, match="--update"):
        bench_training.previous_results(args, ["fast-at"], 200)


def test_zoo_matrix_keeps_only_rows_of_this_clean_revision():
    import zoo_matrix

    assert zoo_matrix.same_revision("abc1234", "abc1234")
    assert not zoo_matrix.same_revision("abc1234", "def5678")
    assert not zoo_matrix.same_revision("abc1234+dirty", "abc1234+dirty")
    assert not zoo_matrix.same_revision(None, "abc1234")


def _autoattack_json(path: Path) -> None:
    def stages(values, seconds):
        return [{"stage": s, "robust_accuracy_after": v, "seconds": t}
                for s, v, t in zip(("apgd-ce", "apgd-t", "fab-t", "square"), values, seconds)]

    data = {
        "settings": {"threads": 1, "limit": 200},
        "results": {"mnist_resnet20@0.1": {
            "model": "mnist_resnet20", "eps": 0.1, "n": 200, "clean_accuracy": 0.98,
            "reference": {"robust_accuracy": 0.11, "seconds": 200.0,
                          "stages": stages((0.2, 0.12, 0.12, 0.11), (10, 47, 6, 137))},
            "gluon_robust": {"robust_accuracy": 0.105, "seconds": 300.0, "process_seconds": 310.0,
                             "stages": stages((0.2, 0.115, 0.115, 0.105), (10, 62, 7, 221))},
            "agreement": 0.995, "time_ratio": 1.55, "attack_time_ratio": 1.5, "cpu_time_ratio": 1.25,
        }},
        "revision": {"commit": "0123456789abcdef", "dirty": True},
        "machine": {"cpus": 2, "platform": "Linux"},
        "versions": {"python": "3.11.7", "mxnet": "1.9.1", "torch": "2.13.0+cpu", "pyautoattack": "0.2.0"},
    }
    path.write_text(json.dumps(data))


def test_tables_render_the_autoattack_results(tmp_path):
    _autoattack_json(tmp_path / "autoattack.json")
    text = tables.render(tmp_path)
    lines = text.splitlines()
    assert "| mnist_resnet20 | 0.1 | 98.0 % | apgd-ce | 20.0 % | 20.0 % |" in lines
    assert "| mnist_resnet20 | 0.1 | 98.0 % | square | 11.0 % | 10.5 % |" in lines
    assert "| mnist_resnet20 | 0.1 | 11.0 % | 10.5 % | 99.5 % | 200 s | 310 s | 1.55 | 1.50 | 1.25 |" in lines
    assert ("From `benchmarks/results/autoattack.json`, revision 0123456+dirty, 2 cores, mxnet 1.9.1, "
            "torch 2.13.0+cpu, pyautoattack 0.2.0.") in lines
    assert "200 held-out digits" in text and "1 thread each" in text
    assert ("Not measured (the run was stopped): mnist_resnet20 at ε 0.3, mnist_resnet20_pgdat at ε 0.1, "
            "mnist_resnet20_pgdat at ε 0.3.") in text
    assert "| `autoattack.json` | 0123456+dirty | 2 | mxnet 1.9.1, torch 2.13.0+cpu |" in lines


def test_tables_replace_only_between_the_markers_and_check(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    _autoattack_json(results / "autoattack.json")
    readme = tmp_path / "README.md"
    readme.write_text(f"# T\n\nbefore\n\n{tables.START}\nold table\n{tables.END}\n\nafter\n")
    argv = ["--results", str(results), "--readme", str(readme)]
    assert tables.main(argv + ["--check"]) == 1
    assert tables.main(argv) == 0
    text = readme.read_text()
    assert text.startswith("# T\n\nbefore\n\n" + tables.START + "\n") and text.endswith(tables.END + "\n\nafter\n")
    assert "old table" not in text and "| mnist_resnet20 | 0.1 | 98.0 % | square | 11.0 % | 10.5 % |" in text
    assert tables.main(argv + ["--check"]) == 0


def test_tables_refuse_a_readme_without_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    assert tables.main(["--results", str(tmp_path), "--readme", str(readme)]) == 2
    assert readme.read_text() == "no markers\n"


def test_readme_tables_are_those_of_the_committed_results():
    assert tables.main(["--readme", str(ROOT / "README.md"), "--check"]) == 0


def test_reference_log_gives_each_stage_its_own_seconds():
    import vs_autoattack

    lines = ["initial accuracy: 98.00%", "apgd-ce - 1/1 - 150 out of 196 successfully perturbed",
             "robust accuracy after APGD-CE: 23.00% (total time 10.5 s)",
             "robust accuracy after APGD-T: 0.00% (total time 40.0 s)",
             "no robust datapoints left, skipping remaining attacks"]
    stages = vs_autoattack.parse_reference_log(lines, final=0.0)
    assert [s["stage"] for s in stages] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert [s["robust_accuracy_after"] for s in stages] == [0.23, 0.0, 0.0, 0.0]
    assert [s["seconds"] for s in stages] == [10.5, 29.5, 0.0, 0.0]
    assert [s["skipped"] for s in stages] == [False, False, True, True]
    with pytest.raises(SystemExit):
        vs_autoattack.parse_reference_log(["initial accuracy: 98.00%"], final=0.98)


def test_vs_autoattack_flags_are_refused_in_one_line(capsys):
    import vs_autoattack

    for argv, flag in ((["--eps", "0"], "--eps"), (["--limit", "-3"], "--limit"), (["--threads", "x"], "--threads"),
                       (["--models", "resnet50_v1"], "--models")):
        with pytest.raises(SystemExit):
            vs_autoattack.parse_args(argv)
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert flag in err and argv[1] in err


def test_tables_render_the_memory_results(tmp_path):
    data = {
        "evaluate_standard": [
            {"n": 1000, "peak_rss_mib": 856.8, "budget": "1G", "clean_accuracy": 0.016, "attacked": 16,
             "images_if_held_mib": 574.2, "seconds": 10.0},
            {"n": 10000, "peak_rss_mib": 890.7, "budget": "1G", "clean_accuracy": 0.0016, "attacked": 16,
             "images_if_held_mib": 5742.2, "seconds": 10.0},
        ],
        "revision": {"commit": "fedcba9876543210", "dirty": False},
        "machine": {"cpus": 2},
        "versions": {"mxnet": "1.9.1"},
    }
    (tmp_path / "memory.json").write_text(json.dumps(data))
    lines = tables.render(tmp_path).splitlines()
    assert "| 1,000 | 1G | 857 MiB | 574 MiB | 16 | 1.6 % |" in lines
    assert "| 10,000 | 1G | 891 MiB | 5742 MiB | 16 | 0.2 % |" in lines
    assert "From `benchmarks/results/memory.json`, revision fedcba9, 2 cores, mxnet 1.9.1." in lines


def test_tables_render_the_revision_comparison(tmp_path):
    data = {"baseline_revision": "0f43228aaaa", "this_revision": "1234567bbbb", "repeats": 3, "load_average": [1.5, 2.25],
            "rows": [{"workload": "pgd-10", "this_seconds": 1.5, "baseline_seconds": 1.25, "ratio": 1.2}],
            "revision": {"commit": "1234567bbbb", "dirty": False}, "machine": {"cpus": 2}, "versions": {}}
    (tmp_path / "revisions.json").write_text(json.dumps(data))
    lines = tables.render(tmp_path).splitlines()
    assert "| workload | 0f43228 | 1234567 | ratio |" in lines
    assert "| pgd-10 | 1.25 s | 1.50 s | 1.20 |" in lines


def _meta(**extra):
    return dict({"revision": {"commit": "1234567bbbb", "dirty": False}, "machine": {"cpus": 2}, "versions": {}},
                **extra)


def test_tables_render_the_demo_against_its_floor(tmp_path):
    data = _meta(cores=2, load_average_at_start=0.5, results=[
        {"code": "this", "workers": 2, "wall_s": 300.0, "floor_s": 250.0, "cpu_s": 590.0, "same_figures": True},
        {"code": "baseline", "workers": 2, "wall_s": 330.0, "floor_s": 275.0, "cpu_s": 640.0, "same_figures": False}])
    (tmp_path / "demo.json").write_text(json.dumps(data))
    lines = tables.render(tmp_path).splitlines()
    assert "| this | 2 | 300 s | 250 s | 1.20 | 590 s | yes |" in lines
    assert "| baseline | 2 | 330 s | 275 s | 1.20 | 640 s | NO |" in lines


def test_tables_render_the_cluster_speed_up(tmp_path):
    data = _meta(limit=200, recipe="standard", eps="0.3", batch_size=25, config="mnist_resnet20_pgdat", cores=2,
                 load_average_at_start=0.25, results=[
                     {"config": "1 process", "wall_s": 1000.4, "speedup": 1.0, "cpu_s": 990.0, "report_equal": True},
                     {"config": "local:2", "wall_s": 540.0, "speedup": 1.8526, "cpu_s": 1050.0, "report_equal": True}])
    (tmp_path / "bench_cluster.json").write_text(json.dumps(data))
    text = tables.render(tmp_path)
    assert "| 1 process | 1000 s | 1.00x | 990 s | yes |" in text.splitlines()
    assert "| local:2 | 540 s | 1.85x | 1050 s | yes |" in text.splitlines()
    assert "on 200 digits of `mnist_resnet20_pgdat` (batches of 25)" in text


def test_tables_render_the_relu6_rewrite(tmp_path):
    data = _meta(model="mobilenetv2_1.0", input=[3, 224, 224], batch_size=8, threads="1", repeats=5,
                 ms_per_image={"clip": {"step": 100.0, "forward": 40.0},
                               "relu-minimum": {"step": 70.0, "forward": 30.0}},
                 ratio_rewritten_over_clip={"step": 0.7, "forward": 0.75}, same_logits=True, same_input_gradient=False)
    (tmp_path / "relu6.json").write_text(json.dumps(data))
    text = tables.render(tmp_path)
    assert "| relu-minimum | 70.0 | 30.0 |" in text.splitlines()
    assert "| ratio | 0.70 | 0.75 |" in text.splitlines()
    assert "were NOT the same bit for bit" in text


def test_tables_render_the_allocator_comparison(tmp_path):
    def setting(ms, faults, rss):
        return {"ms_per_image_step": ms, "minor_faults_per_step": faults, "system_s_per_step": 0.0, "peak_rss_mb": rss}

    data = _meta(batch_size=32, steps=4, rounds=2, threads=1, load_average_at_start=[0.5, 0.7, 0.9], models={
        "mobilenetv2_1.0": {"input": [3, 224, 224], "system": setting(120.0, 510000.0, 3500.0),
                            "tuned": setting(75.0, 25000.0, 3800.0),
                            "ratio_tuned_over_system": {"ms_per_image_step": 0.625, "peak_rss_mb": 1.086},
                            "same_numbers": False}})
    (tmp_path / "allocator.json").write_text(json.dumps(data))
    text = tables.render(tmp_path)
    assert ("| `mobilenetv2_1.0` | 3x224x224 | 120.0 | 75.0 | 0.62 | 510,000 / 25,000 | 3500 / 3800 | NO |"
            in text.splitlines())
    assert "load average 0.5 at the start" in text
