"""Class tables: folders named by synset or class name get the model's labels, --labels, input size from data."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import List, Sequence

import cv2
import mxnet as mx
import numpy as np
import pytest
from gluoncv.model_zoo import get_model

from gluon_robust.cli import main
from gluon_robust.data import ClassTable, PredictedLabels, class_table_for, load_class_table, load_data
from gluon_robust.data.labels import CIFAR10_CLASSES, imagenet_table
from gluon_robust.errors import DataError
from gluon_robust.model import load_classifier
from gluon_robust.validation import InvalidValue

SIZE = 64  # small ImageNet-family inputs: fast on CPU


# ------------------------------------------------------------------ helpers
def zoo_params(tmp_path: Path, arch: str, size: int, classes: int, seed: int = 0) -> str:
    """Fixed random weights (Xavier, seeded) for a zoo architecture, saved as a .params file."""
    mx.random.seed(seed)
    net = get_model(arch, classes=classes)
    net.initialize(mx.init.Xavier(magnitude=3))
    net(mx.nd.zeros((1, 3, size, size)))
    path = tmp_path / f"{arch}-{classes}.params"
    net.save_parameters(str(path))
    return str(path)


def write_images(root: Path, count: int, size: int, seed: int = 0) -> List[Path]:
    """``count`` random RGB PNGs (lossless) under ``root/unsorted/``."""
    rng = np.random.RandomState(seed)
    folder = root / "unsorted"
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        colour = rng.randint(0, 256, 3)  # a different base colour per image: more varied predictions
        image = np.clip(colour + rng.randint(-40, 41, (size, size, 3)), 0, 255).astype(np.uint8)
        path = folder / f"img{i:02d}.png"
        assert cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


def decoded_predictions(model, root: Path, paths: Sequence[Path], size: int) -> np.ndarray:
    """The model's predictions on the images as the folder source decodes them (resized and cropped)."""
    source = load_data(f"folder:{root}", input_size=size)  # one folder, no table: sorted order = file order
    assert [Path(p).name for p, _ in source._items] == [p.name for p in paths]  # noqa: SLF001
    x, _ = source.arrays()
    return np.asarray(model(mx.nd.array(x)).asnumpy()).argmax(axis=1)


def sort_into(root: Path, paths: Sequence[Path], folder_names: Sequence[str]) -> Path:
    """Copy each image into ``root/<its folder name>/``; returns ``root``."""
    for path, name in zip(paths, folder_names):
        (root / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / name / path.name)
    return root


def run_cli(args: List[str], capsys) -> tuple:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, [line for line in captured.err.splitlines() if line.strip()]


# ------------------------------------------------------------------ the table itself
def test_imagenet_table_lookup_by_synset_name_index_case_and_underscores():
    table = imagenet_table()
    assert len(table) == 1000
    assert table.lookup("n01440764") == 0 and table.lookup("tench") == 0
    assert table.lookup("Great_White_Shark") == 2 == table.lookup("great white shark")
    assert table.lookup("999") == 999 and table.lookup("1000") is None
    assert table.lookup("no such class") is None
    assert table.describe(1) == "1 (goldfish)"
    assert class_table_for("resnet18_v1", 1000).names == table.names
    assert class_table_for("cifar_resnet20_v1", 10).names == list(CIFAR10_CLASSES)
    assert class_table_for("cifar_resnet20_v1", 100) is None and class_table_for("resnet18_v1", 7) is None


def test_a_config_describes_its_own_classes_so_it_gets_no_family_table():
    # mnist_resnet20 is a cifar_resnet20_v1 with 10 outputs trained on digits: CIFAR-10 names would be wrong
    assert load_classifier("mnist_resnet20").class_table is None
    assert load_classifier("mnist_resnet20", labels=[str(d) for d in range(10)]).class_names[3] == "3"


def test_ambiguous_name_crane_is_an_error_suggesting_its_synsets(tmp_path):
    root = tmp_path / "photos"
    (root / "crane").mkdir(parents=True)
    cv2.imwrite(str(root / "crane" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError) as err:
        load_data(f"folder:{root}", input_size=8, class_table=imagenet_table())
    message = str(err.value)
    assert "'crane'" in message and "ambiguous" in message and "\n" not in message
    assert "n02012849" in message and "n03126707" in message  # the two synsets named 'crane'


def test_unmatched_folders_list_nearest_names_and_never_fall_back_to_sorted_indices(tmp_path):
    root = tmp_path / "photos"
    for name in ("goldfsh", "class_b", "tench"):
        (root / name).mkdir(parents=True)
        cv2.imwrite(str(root / name / "a.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError) as err:
        load_data(f"folder:{root}", input_size=8, class_table=imagenet_table())
    message = str(err.value)
    assert "'goldfsh'" in message and "'class_b'" in message and "'goldfish'" in message
    assert "'tench'" not in message.split("(1 matched)")[0].split(":", 2)[-1]  # the matched folder is not blamed


def test_numeric_folders_map_to_their_own_index(tmp_path):
    root = tmp_path / "photos"
    for name in ("7", "12", "999"):
        (root / name).mkdir(parents=True)
        cv2.imwrite(str(root / name / "a.png"), np.zeros((8, 8, 3), np.uint8))
    source = load_data(f"folder:{root}", input_size=8, class_table=imagenet_table())
    folder_of = {Path(p).parent.name: label for p, label in source._items}  # noqa: SLF001
    assert folder_of == {"7": 7, "12": 12, "999": 999}
    assert sorted(source.labels.tolist()) == [7, 12, 999]


def test_no_table_keeps_sorted_indices_and_warns_on_a_class_count_mismatch(tmp_path, caplog):
    root = tmp_path / "photos"
    for name in ("b", "a"):
        (root / name).mkdir(parents=True)
        cv2.imwrite(str(root / name / "x.png"), np.zeros((8, 8, 3), np.uint8))
    source = load_data(f"folder:{root}", input_size=8, num_classes=5)
    assert source.classes == ["a", "b"] and sorted(source.labels.tolist()) == [0, 1]
    assert any("2 class folders" in r.getMessage() and "5 classes" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ ImageNet folders, end to end
@pytest.fixture(scope="module")
def imagenet_setup(tmp_path_factory):
    """A fixed random mobilenet0.25 (1,000 classes) and 6 PNGs with its predictions on them as decoded."""
    tmp = tmp_path_factory.mktemp("imagenet")
    params = zoo_params(tmp, "mobilenet0.25", SIZE, 1000)
    model = load_classifier("mobilenet0.25", params=params, input_size=SIZE)
    paths = write_images(tmp / "raw", 6, SIZE)
    preds = decoded_predictions(model, tmp / "raw", paths, SIZE)
    assert len(set(preds.tolist())) >= 3  # varied classes, so that labels by folder order would be wrong
    return tmp, params, model, paths, preds


@pytest.mark.parametrize("naming", ["synset", "name"])
def test_imagenet_folders_by_synset_or_name_give_the_models_labels(imagenet_setup, naming, tmp_path):
    _, _, model, paths, preds = imagenet_setup
    table = imagenet_table()
    names = [table.synsets[p] if naming == "synset" else table.names[p].replace(" ", "_") for p in preds]
    if naming == "name":  # an ambiguous name cannot be a folder: rename it by synset for this check
        names = [table.synsets[p] if table.names.count(table.names[p]) > 1 else n for p, n in zip(preds, names)]
    root = sort_into(tmp_path / "photos", paths, names)
    source = load_data(f"folder:{root}", input_size=SIZE, class_table=model.class_table)
    assert sorted(source.labels.tolist()) == sorted(preds.tolist())
    x, y = source.arrays()
    assert np.array_equal(y, source.labels)
    accuracy = float((model.predict(x).argmax(axis=1) == y).mean())
    assert accuracy == 1.0
    # the control: the same images under sorted-index folders (the old labels) are not 100 % right
    old = load_data(f"folder:{root}", input_size=SIZE)
    assert not np.array_equal(old.labels, source.labels)


def test_cli_attack_on_synset_folders_reports_full_clean_accuracy_and_class_names(imagenet_setup, tmp_path, capsys):
    _, params, _, paths, preds = imagenet_setup
    table = imagenet_table()
    root = sort_into(tmp_path / "photos", paths, [table.synsets[p] for p in preds])
    out = tmp_path / "out"
    code, stdout, err = run_cli(["attack", "--model", "mobilenet0.25", "--params", params, "--input-size",
                                 f"3,{SIZE},{SIZE}", "--data", f"folder:{root}", "--attack", "fgsm", "--eps", "0.01",
                                 "--out", str(out)], capsys)
    assert code == 0, err
    assert json.loads(stdout)["clean_accuracy"] == 1.0
    rows = list(csv.DictReader((out / "per_sample.csv").open()))
    assert len(rows) == 6
    for row in rows:
        assert row["label_name"] == table.names[int(row["label"])]
        assert row["clean_prediction_name"] == table.names[int(row["clean_prediction"])]
    clean_pngs = sorted(p.name for p in (out / "images").glob("*_clean.png"))
    assert clean_pngs and all(f"_label{int(r['label'])}-" in " ".join(clean_pngs) for r in rows)
    # class-named folders that match nothing: one line naming them, before any work
    bad = sort_into(tmp_path / "bad", paths, [f"class_{i % 2}" for i in range(len(paths))])
    code, _, err = run_cli(["attack", "--model", "mobilenet0.25", "--params", params, "--input-size",
                            f"3,{SIZE},{SIZE}", "--data", f"folder:{bad}", "--attack", "fgsm", "--eps", "0.01",
                            "--out", str(tmp_path / "out2")], capsys)
    assert code == 2 and len(err) == 1 and "'class_0'" in err[0] and "nearest known names" in err[0]
    assert not (tmp_path / "out2" / "summary.json").exists()


# ------------------------------------------------------------------ CIFAR-10
def test_cifar_class_named_folders(tmp_path, capsys):
    params = zoo_params(tmp_path, "cifar_resnet20_v1", 32, 10, seed=2)
    model = load_classifier("cifar_resnet20_v1", params=params)
    assert model.class_names == list(CIFAR10_CLASSES)
    paths = write_images(tmp_path / "raw", 8, 32, seed=2)
    preds = decoded_predictions(model, tmp_path / "raw", paths, 32)
    assert len(set(preds.tolist())) >= 2 and 0 not in preds  # sorted-index labels would be wrong
    root = sort_into(tmp_path / "photos", paths, [CIFAR10_CLASSES[p].upper() for p in preds])  # case does not matter
    out = tmp_path / "out"
    code, stdout, err = run_cli(["attack", "--model", "cifar_resnet20_v1", "--params", params, "--data",
                                 f"folder:{root}", "--attack", "fgsm", "--eps", "0.01", "--out", str(out)], capsys)
    assert code == 0, err
    assert json.loads(stdout)["clean_accuracy"] == 1.0
    assert json.loads(stdout)["n"] == 8


# ------------------------------------------------------------------ --labels FILE and predicted
@pytest.fixture
def three_class(tmp_path):
    """A fixed random 3-class cifar_resnet20_v1 (no table of its own) and 6 PNGs with its decoded predictions."""
    params = zoo_params(tmp_path, "cifar_resnet20_v1", 32, 3, seed=2)
    model = load_classifier("cifar_resnet20_v1", params=params, classes=3)
    assert model.class_table is None
    paths = write_images(tmp_path / "raw", 8, 32, seed=2)
    preds = decoded_predictions(model, tmp_path / "raw", paths, 32)
    assert sorted(set(preds.tolist())) == [0, 1, 2]  # every class present: sorted-index labels would be wrong
    return params, paths, preds


@pytest.mark.parametrize("fmt", ["json-list", "json-map", "txt"])
def test_labels_file_maps_a_custom_classifiers_outputs(three_class, tmp_path, fmt, capsys):
    params, paths, preds = three_class
    names = ["zebra", "apple", "moon"]  # not sorted: sorted-index labels would be wrong
    if fmt == "txt":
        (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
        file = tmp_path / "names.txt"
    else:
        file = tmp_path / "names.json"
        file.write_text(json.dumps(names if fmt == "json-list" else {n: i for i, n in enumerate(names)}))
    assert load_class_table(file, 3).names == names
    root = sort_into(tmp_path / "photos", paths, [names[p] for p in preds])
    code, stdout, err = run_cli(["attack", "--model", "cifar_resnet20_v1", "--classes", "3", "--params", params,
                                 "--labels", str(file), "--data", f"folder:{root}", "--attack", "fgsm",
                                 "--eps", "0.01", "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    assert json.loads(stdout)["clean_accuracy"] == 1.0


def test_labels_file_of_the_wrong_length_is_a_one_line_error_naming_the_flag(three_class, tmp_path, capsys):
    params, paths, _ = three_class
    (tmp_path / "names.txt").write_text("a\nb\n")
    root = sort_into(tmp_path / "photos", paths, ["a"] * len(paths))
    code, _, err = run_cli(["attack", "--model", "cifar_resnet20_v1", "--classes", "3", "--params", params,
                            "--labels", str(tmp_path / "names.txt"), "--data", f"folder:{root}", "--attack", "fgsm",
                            "--eps", "0.01", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(err) == 1
    assert "--labels" in err[0] and "3 class names" in err[0] and "not 2" in err[0]
    with pytest.raises(InvalidValue):
        load_class_table(["a", "b"], 3)


def test_labels_predicted_labels_each_sample_with_the_models_prediction(tmp_path, tiny_model, capsys):
    x = np.random.RandomState(2).rand(10, 1, 8, 8).astype(np.float32)
    source = load_data(_npz(tmp_path / "d.npz", x, np.zeros(10, np.int64)))
    wrapped = PredictedLabels(source, tiny_model, batch_size=3)
    assert wrapped.labels is None  # not known without running the model
    expected = tiny_model(mx.nd.array(x)).asnumpy().argmax(axis=1)  # one forward pass, not predict()'s chunks
    seen = np.concatenate([b.y for b in wrapped.batches(4)])
    assert np.array_equal(seen, expected)
    part = wrapped.subset([7, 2])
    assert np.array_equal(part.arrays()[1], expected[[7, 2]])


def test_cli_labels_predicted_gives_full_clean_accuracy_on_wrongly_labelled_data(tmp_path, capsys):
    x = np.random.RandomState(4).rand(6, 1, 28, 28).astype(np.float32)
    data = _npz(tmp_path / "d.npz", x, np.full(6, 9))
    code, stdout, err = run_cli(["attack", "--config", "mnist_resnet20", "--data", data, "--labels", "predicted",
                                 "--attack", "fgsm", "--eps", "0.05", "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    assert json.loads(stdout)["clean_accuracy"] == 1.0
    model = load_classifier("mnist_resnet20")
    rows = list(csv.DictReader((tmp_path / "out" / "per_sample.csv").open()))
    assert [int(r["label"]) for r in rows] == model(mx.nd.array(x)).asnumpy().argmax(axis=1).tolist()


# ------------------------------------------------------------------ input size from the data
def _npz(path: Path, x: np.ndarray, y: np.ndarray) -> str:
    np.savez(path, x=x, y=y)
    return f"npz:{path}"


def test_input_size_comes_from_an_npz_when_not_given(tmp_path, capsys):
    x = np.random.RandomState(0).rand(4, 1, 28, 28).astype(np.float32)
    data = _npz(tmp_path / "d.npz", x, np.arange(4))
    out = tmp_path / "out"
    code, stdout, err = run_cli(["attack", "--model", "cifar_resnet20_v1", "--data", data, "--attack", "fgsm",
                                 "--eps", "0.01", "--out", str(out)], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert "input 1x28x28" in summary["model"] and summary["n"] == 4


def test_an_explicit_input_size_that_disagrees_with_the_data_is_a_one_line_error(tmp_path, capsys):
    x = np.random.RandomState(0).rand(4, 1, 28, 28).astype(np.float32)
    data = _npz(tmp_path / "d.npz", x, np.arange(4))
    code, _, err = run_cli(["attack", "--model", "cifar_resnet20_v1", "--input-size", "3,32,32", "--data", data,
                            "--attack", "fgsm", "--eps", "0.01", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(err) == 1
    assert "28x28" in err[0] and "32x32" in err[0]


def test_a_net_that_cannot_take_the_datas_size_names_both_shapes(tmp_path, capsys):
    from mxnet import gluon

    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(4, in_units=3 * 8 * 8))  # a fixed-size head: only 3x8x8 inputs fit
    net.initialize()
    prefix = str(tmp_path / "fixed")
    net.hybridize()
    net(mx.nd.zeros((1, 3, 8, 8)))
    net.export(prefix)
    data = _npz(tmp_path / "d.npz", np.random.RandomState(0).rand(4, 1, 28, 28).astype(np.float32), np.arange(4))
    code, _, err = run_cli(["attack", "--model", f"{prefix}-symbol.json", "--data", data, "--attack", "fgsm",
                            "--eps", "0.01", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(err) == 1
    assert "(1, 28, 28)" in err[0] and "does not accept" in err[0]


# ------------------------------------------------------------------ reports
def test_evaluate_report_names_classes(imagenet_setup, tmp_path, capsys):
    _, params, _, paths, preds = imagenet_setup
    table = imagenet_table()
    root = sort_into(tmp_path / "photos", paths, [table.synsets[p] for p in preds])
    out = tmp_path / "report"
    code, _, err = run_cli(["evaluate", "--model", "mobilenet0.25", "--params", params, "--input-size",
                            f"3,{SIZE},{SIZE}", "--data", f"folder:{root}", "--attacks", "fgsm", "--eps", "0.5",
                            "--no-progress", "--out", str(out)], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["clean_accuracy"] == 1.0 and report["class_names"] == table.names
    examples = np.load(out / "examples.npz")
    md = (out / "report.md").read_text()
    html_text = (out / "report.html").read_text()
    for y, p in zip(examples["y"], examples["pred"]):
        expected = f"label {int(y)} ({table.names[int(y)]}) \u2192 fgsm: pred {int(p)} ({table.names[int(p)]})"
        assert expected in md
        assert f"label {int(y)} ({table.names[int(y)]})" in html_text


def test_class_table_validation():
    with pytest.raises(DataError):
        ClassTable(["only one"])
    with pytest.raises(DataError):
        ClassTable(["a", ""])
    table = ClassTable(["a", "b"], aliases={"alpha": 0})
    assert table.lookup("ALPHA") == 0
