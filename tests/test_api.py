"""The Python API takes arrays, NDArrays, DataLoaders and DataSources alike (as_source, evaluate, attack, certify)."""

from __future__ import annotations

import json
import os

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

import gluon_robust as gr
from gluon_robust.data import ArraySource, DatasetSource, as_source
from gluon_robust.errors import ConfigError, DataError


@pytest.fixture
def half_right(tiny_model):
    """16 inputs whose first 8 labels are the model's predictions and last 8 are not: clean accuracy 0.5."""
    x = np.random.RandomState(1).rand(16, 1, 8, 8).astype(np.float32)
    pred = tiny_model.predict(x).argmax(axis=1)
    y = np.where(np.arange(16) < 8, pred, (pred + 1) % 10).astype(np.int64)
    return x, y


class CountingDataset(gluon.data.Dataset):
    """HWC uint8 images, as Gluon's vision datasets give them, recording which samples were read."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y, self.read = x, y, []

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        self.read.append(i)
        return mx.nd.array(self.x[i], dtype="uint8"), np.float32(self.y[i])


def test_as_source_converts_arrays_ndarrays_pairs_and_keeps_sources(half_right):
    x, y = half_right
    for source in (as_source(x, y), as_source(mx.nd.array(x), mx.nd.array(y)), as_source((x, y))):
        assert isinstance(source, ArraySource) and len(source) == 16
        sx, sy = source.arrays()
        np.testing.assert_array_equal(sx, x)
        np.testing.assert_array_equal(sy, y)
        assert sy.dtype == np.int64
    original = ArraySource(x, y)
    assert as_source(original) is original


def test_as_source_streams_a_shuffled_dataloader_in_dataset_order():
    rng = np.random.RandomState(0)
    hwc = rng.randint(0, 256, (10, 6, 6, 3)).astype(np.uint8)
    labels = rng.randint(0, 4, 10)
    dataset = CountingDataset(hwc, labels)
    loader = gluon.data.DataLoader(dataset, batch_size=4, shuffle=True)
    source = as_source(loader)
    assert isinstance(source, DatasetSource) and len(source) == 10 and source.sample_shape == (3, 6, 6)
    dataset.read.clear()
    first = next(source.batches(4))
    assert dataset.read == [0, 1, 2, 3]  # one batch read, nothing more: the dataset is never loaded whole
    np.testing.assert_allclose(first.x, hwc[:4].transpose(0, 3, 1, 2) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(first.y, labels[:4])
    np.testing.assert_array_equal(first.index, np.arange(4))
    x, y = source.subset(slice(6, 10)).arrays()
    np.testing.assert_allclose(x, hwc[6:].transpose(0, 3, 1, 2) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, labels[6:])


def test_as_source_refuses_what_it_cannot_use(half_right):
    x, y = half_right
    loader = gluon.data.DataLoader(gluon.data.ArrayDataset(x, y), batch_size=4)
    with pytest.raises(DataError, match=r"images were given without labels: pass as_source\(x, y\)"):
        as_source(x)
    with pytest.raises(DataError, match="labels were given with a DataLoader, which holds its own"):
        as_source(loader, y)
    with pytest.raises(DataError, match="cannot use list as data"):
        as_source([1, 2, 3])
    with pytest.raises(DataError, match=r"float images must lie in \[0, 1\]"):
        as_source(x * 255, y)


def test_attack_gives_the_same_summary_on_arrays_a_dataloader_and_a_source(tiny_model, half_right, tmp_path):
    x, y = half_right
    loader = gluon.data.DataLoader(gluon.data.ArrayDataset(mx.nd.array(x), mx.nd.array(y)), batch_size=5, shuffle=True)
    out = tmp_path / "pgd"
    summaries = [
        gr.attack(tiny_model, x, y, attack="pgd", eps=0.1, steps=5, out_dir=out),
        gr.attack(tiny_model, mx.nd.array(x), mx.nd.array(y), attack="pgd", eps=0.1, steps=5),
        gr.attack(tiny_model, loader, attack="pgd", eps=0.1, steps=5),
        gr.attack(tiny_model, ArraySource(x, y), attack="pgd", eps=0.1, steps=5),
    ]
    keys = ("n", "clean_accuracy", "robust_accuracy", "success_rate", "attacked")
    for summary in summaries[1:]:
        assert {k: summary[k] for k in keys} == {k: summaries[0][k] for k in keys}
    assert summaries[0]["n"] == 16 and summaries[0]["clean_accuracy"] == 0.5 and summaries[0]["attacked"] == 8
    saved = np.load(out / "adversarial.npz")
    robust = tiny_model.predict(saved["x_adv"]).argmax(axis=1) == y  # recomputed here, from the saved examples
    assert summaries[0]["robust_accuracy"] == pytest.approx(robust.mean())
    assert np.abs(saved["x_adv"] - x).max() <= 0.1 + 1e-6
    assert json.loads((out / "summary.json").read_text())["robust_accuracy"] == summaries[0]["robust_accuracy"]


def test_attack_without_out_dir_writes_nothing_and_checks_options_first(tiny_model, half_right, tmp_path, monkeypatch):
    x, y = half_right
    monkeypatch.chdir(tmp_path)
    gr.attack(tiny_model, x, y, attack="fgsm", eps=0.05)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ConfigError, match="fgsm does not take steps"):
        gr.attack(tiny_model, x, y, attack="fgsm", eps=0.05, steps=3)
    with pytest.raises(ConfigError, match="seed must be an integer in 0..4294967295, got -1"):
        gr.attack(tiny_model, x, y, attack="fgsm", eps=0.05, seed=-1)


def test_evaluate_takes_arrays_and_a_dataloader(tiny_model, half_right):
    x, y = half_right
    loader = gluon.data.DataLoader(gluon.data.ArrayDataset(x, y), batch_size=4, shuffle=True)
    by_arrays = gr.evaluate(tiny_model, x, y, attacks=["fgsm", "pgd"], eps=[0.1], progress=False)
    by_loader = gr.evaluate(tiny_model, loader, attacks=["fgsm", "pgd"], eps=[0.1], progress=False)
    assert by_arrays["n"] == by_loader["n"] == 16
    assert by_arrays["clean_accuracy"] == by_loader["clean_accuracy"] == 0.5
    assert by_arrays["worst_case"] == by_loader["worst_case"]


def test_certify_takes_arrays_and_writes_only_when_asked(tiny_model, half_right, tmp_path):
    x, y = half_right
    options = dict(sigma=0.1, n0=10, n=50, alpha=0.01, radii=(0.0, 0.1))
    by_arrays = gr.certify(tiny_model, x[:4], y[:4], **options)
    by_source = gr.certify(tiny_model, ArraySource(x[:4], y[:4]), out_dir=tmp_path / "cert", **options)
    assert by_arrays["certified_accuracy"] == by_source["certified_accuracy"]
    assert [p["prediction"] for p in by_arrays["points"]] == [p["prediction"] for p in by_source["points"]]
    written = json.loads((tmp_path / "cert" / "certify.json").read_text())
    assert written["certified_accuracy"] == by_source["certified_accuracy"] and written["n_points"] == 4


def test_data_of_another_shape_is_refused_before_any_work(tmp_path):
    """The Python API checks the sample shape against the model as the CLI does: one DataError, nothing written."""
    model = gr.load_classifier("mnist_resnet20")
    x = np.zeros((2, 1, 32, 32), np.float32)  # the model takes 1x28x28
    y = np.zeros(2, np.int64)
    out = tmp_path / "out"
    for call in (lambda: gr.attack(model, x, y, attack="fgsm", eps=0.1, out_dir=out),
                 lambda: gr.evaluate(model, (x, y), attacks=["fgsm"], eps=[0.1], out_dir=out),
                 lambda: gr.certify(model, x, y, n0=10, n=20, out_dir=out)):
        with pytest.raises(DataError, match=r"shape \(1, 32, 32\) but the model expects \(1, 28, 28\)"):
            call()
        assert not out.exists()
