"""Preprocessing defences: gradient paths (exact, BPDA, EOT, naive), the chain, each defence's properties, specs."""

from __future__ import annotations

from typing import Optional, Tuple

import mxnet as mx
import numpy as np
import pytest
from mxnet import nd

from gluon_robust.attacks import input_gradient
from gluon_robust.attacks.losses import LOSSES
from gluon_robust.defenses import (
    DEFENSES, BitDepthReduction, DefendedClassifier, DefenseChain, GaussianNoise, JPEGCompression, MedianFilter,
    Preprocessor, RandomResizePad, SpatialSmoothing, TVMinimization, WrapDefense, defend, parse_defense_spec,
)
from gluon_robust.defenses.jpeg import differentiable_jpeg, quantization_tables
from gluon_robust.defenses.smoothing_filters import differentiable_median
from gluon_robust.defenses.tv import total_variation
from gluon_robust.errors import ConfigError

from conftest import linear_classifier

CE = LOSSES["ce"]

#: One small instance of every registered defence (the wrap one around an OpenCV blur).
SPECS = {
    "jpeg": "jpeg:quality=50",
    "bitdepth": "bitdepth:bits=3",
    "median": "median:size=3",
    "spatial": "spatial:size=3,sigma=1.0",
    "noise": "noise:sigma=0.1",
    "resize-pad": "resize-pad:max_ratio=1.3",
    "tv": "tv:keep=0.5,steps=10",
    "wrap": "wrap:fn=test_defenses:opencv_blur,pixels=uint8",
}


def opencv_blur(img: np.ndarray) -> np.ndarray:
    """An OpenCV function on one HWC uint8 image (imported by the wrap spec above)."""
    import cv2

    return cv2.GaussianBlur(img, (3, 3), 0)


def grad_of(model, x: np.ndarray, y: np.ndarray, eot_samples: int = 1) -> np.ndarray:
    g, _, _ = input_gradient(model, nd.array(x), nd.array(y), None, CE, eot_samples)
    return g.asnumpy()


def apply(defense: Preprocessor, x: np.ndarray, bounds: Tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    return defense.transform(nd.array(x), bounds).asnumpy()


def test_every_defense_has_a_spec_here():
    assert sorted(SPECS) == DEFENSES.names()


# ------------------------------------------------------------------ gradient paths
@pytest.mark.parametrize("spec", ["jpeg:quality=60,bpda=identity", "bitdepth:bits=2", "median:size=3,bpda=identity"])
def test_bpda_gradient_is_the_undefended_gradient_at_the_defended_point(spec, tiny_model, tiny_batch):
    x, y = tiny_batch
    defended = defend(tiny_model, spec, gradient="bpda")
    (d,) = defended.chain.defenses
    x_def = apply(d, x)
    assert np.abs(x_def - x).max() > 0.01  # the defence changes the input
    np.testing.assert_allclose(grad_of(defended, x, y), grad_of(tiny_model, x_def, y), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("spec", ["jpeg:quality=60", "bitdepth:bits=2", "median:size=3"])
def test_naive_gradient_is_zero_for_non_differentiable_defenses(spec, tiny_model, tiny_batch):
    x, y = tiny_batch
    defended = defend(tiny_model, spec, gradient="naive")
    assert defended.backwards == ["zero"]
    assert not np.any(grad_of(defended, x, y))
    assert np.abs(grad_of(defend(tiny_model, spec, gradient="auto"), x, y)).max() > 0


class _Halving(Preprocessor):
    """Rounds to 0.1 steps; its BPDA substitute is ``x / 2`` (so the gradient must halve)."""

    name = "halving"
    gradient = "bpda"

    def transform(self, x, bounds):
        return nd.round(x * 10) / 10

    def substitute(self, x, bounds):
        return x / 2


def test_bpda_uses_the_declared_substitute(tiny_model, tiny_batch):
    x, y = tiny_batch
    defended = DefendedClassifier(tiny_model, [_Halving()])
    x_def = np.round(x * 10) / 10
    np.testing.assert_allclose(defended.predict(x), tiny_model.predict(x_def), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad_of(defended, x, y), 0.5 * grad_of(tiny_model, x_def, y), rtol=1e-5, atol=1e-7)


def test_jpeg_bpda_pulls_the_gradient_back_through_the_differentiable_jpeg(tiny_model, tiny_batch):
    x, y = tiny_batch
    defended = defend(tiny_model, "jpeg:quality=60", gradient="bpda")
    x_def = apply(defended.chain.defenses[0], x)
    np.testing.assert_allclose(defended.predict(x), tiny_model.predict(x_def), rtol=1e-5, atol=1e-6)
    g_model = nd.array(grad_of(tiny_model, x_def, y))
    xs = nd.array(x)
    xs.attach_grad()
    with mx.autograd.record():
        out = differentiable_jpeg(xs, (0.0, 1.0), 60)
    out.backward(g_model)
    expected = xs.grad.asnumpy()
    np.testing.assert_allclose(grad_of(defended, x, y), expected, rtol=1e-4, atol=1e-6)
    assert np.abs(expected - g_model.asnumpy()).max() > 1e-3  # not the identity backward


@pytest.mark.parametrize("quality", [50, 75, 95])
def test_differentiable_jpeg_tracks_the_codec_on_digits(quality, mnist_test):
    x = mnist_test[0][:16]
    real = apply(JPEGCompression(quality=quality), x)
    approx = differentiable_jpeg(nd.array(x), (0.0, 1.0), quality).asnumpy()
    assert np.abs(approx - x).max() <= 1.0 + 1e-6 and approx.min() >= 0.0
    # within a fraction of what the codec itself changes (the codec rounds pixels to 8 bits; the substitute does not)
    assert np.abs(approx - real).mean() < 0.4 * np.abs(real - x).mean()
    assert np.abs(approx - real).mean() < 1.0 / 255


def test_jpeg_tables_follow_libjpeg_scaling():
    luma50, chroma50 = quantization_tables(50)
    assert luma50[0, 0] == 16 and chroma50[0, 0] == 17 and luma50[7, 7] == 99  # quality 50: the standard tables
    luma100, _ = quantization_tables(100)
    assert np.all(luma100 == 1)
    luma10, _ = quantization_tables(10)
    assert luma10[0, 0] == 80 and luma10.max() == 255


def _directional_check(model, x: np.ndarray, y: np.ndarray, seed: Optional[int] = None) -> None:
    """<grad, v> equals central differences of the CE loss along random directions (seeded draws, if any)."""
    if seed is not None:
        mx.random.seed(seed)
    g = grad_of(model, x, y)
    rng = np.random.RandomState(0)
    h = 1e-2
    for _ in range(4):
        v = rng.randn(*x.shape).astype(np.float32)
        values = []
        for sign in (1, -1):
            if seed is not None:
                mx.random.seed(seed)
            values.append(CE(model(nd.array(x + sign * h * v)), nd.array(y), None).asnumpy().astype(np.float64))
        numeric = (values[0] - values[1]) / (2 * h)
        analytic = (g * v).reshape(len(x), -1).sum(axis=1)
        np.testing.assert_allclose(analytic, numeric, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("spec", ["spatial:size=3", "spatial:size=5,sigma=1.0"])
def test_exact_path_matches_finite_differences(spec):
    rng = np.random.RandomState(3)
    model = linear_classifier(rng.randn(1, 6, 6), 0.1, bounds=(0.0, 1.0))
    x = rng.rand(4, 1, 6, 6).astype(np.float32)
    y = np.array([0, 1, 0, 1])
    defended = defend(model, spec)
    assert defended.backwards == ["exact"]
    _directional_check(defended, x, y)
    assert np.abs(grad_of(defended, x, y) - grad_of(model, x, y)).max() > 1e-3  # not the identity


@pytest.mark.parametrize("spec", ["noise:sigma=0.05", "resize-pad:max_ratio=1.2"])
def test_each_random_draw_is_differentiated_exactly(spec):
    """With the draw fixed (mx.random.seed), the gradient is the derivative of that draw's function."""
    rng = np.random.RandomState(4)
    model = linear_classifier(rng.randn(1, 6, 6), 0.1, bounds=(0.0, 1.0))
    x = 0.25 + 0.5 * rng.rand(4, 1, 6, 6).astype(np.float32)  # no clipping at the bounds
    defended = defend(model, spec, gradient="naive")
    assert defended.backwards == ["exact"] and defended.eot_samples == 1
    _directional_check(defended, x, np.array([1, 0, 1, 0]), seed=11)


def test_eot_gradient_is_the_average_of_draws_and_reproducible(tiny_model, tiny_batch):
    x, y = tiny_batch
    defended = defend(tiny_model, "noise:sigma=0.1", eot_samples=4)
    assert defended.eot_samples == 4
    mx.random.seed(5)
    eot = grad_of(defended, x, y, eot_samples=defended.eot_samples)
    mx.random.seed(5)
    draws = [grad_of(defended, x, y) for _ in range(4)]
    np.testing.assert_allclose(eot, np.mean(draws, axis=0), rtol=1e-5, atol=1e-7)
    assert np.abs(draws[0] - draws[1]).max() > 0  # the draws differ
    mx.random.seed(5)
    np.testing.assert_array_equal(grad_of(defended, x, y, eot_samples=4), eot)


def test_gradient_modes_choose_each_defenses_backward():
    chain = parse_defense_spec("jpeg:quality=75+spatial:size=3+noise:sigma=0.1+tv:steps=2")
    assert DefenseChain(chain).backwards("auto") == ["bpda", "exact", "exact", "bpda"]
    assert DefenseChain(chain).backwards("eot") == ["bpda", "exact", "exact", "bpda"]
    assert DefenseChain(chain).backwards("naive") == ["zero", "exact", "exact", "zero"]
    assert DefenseChain(chain).backwards("bpda") == ["bpda"] * 4
    eot = DefendedClassifier.eot_samples_for
    assert [eot(chain, m, 7) for m in ("auto", "eot", "naive", "bpda")] == [7, 7, 1, 1]
    deterministic = parse_defense_spec("jpeg")
    assert [eot(deterministic, m) for m in ("auto", "eot", "naive", "bpda")] == [1, 10, 1, 1]


def test_forced_bpda_on_a_differentiable_defense_is_the_identity_backward(tiny_model, tiny_batch):
    x, y = tiny_batch
    defended = defend(tiny_model, "spatial:size=3", gradient="bpda")
    x_def = apply(SpatialSmoothing(size=3), x)
    np.testing.assert_allclose(grad_of(defended, x, y), grad_of(tiny_model, x_def, y), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ the chain and the wrapper
def test_chain_applies_defenses_in_order(tiny_model):
    x = np.random.RandomState(0).rand(3, 1, 8, 8).astype(np.float32)
    bits, blur = BitDepthReduction(bits=1), SpatialSmoothing(size=3)
    first = DefendedClassifier(tiny_model, [bits, blur]).preprocess(nd.array(x)).asnumpy()
    second = DefendedClassifier(tiny_model, [blur, bits]).preprocess(nd.array(x)).asnumpy()
    np.testing.assert_allclose(first, apply(blur, apply(bits, x)), atol=1e-6)
    np.testing.assert_allclose(second, apply(bits, apply(blur, x)), atol=1e-6)
    assert len(np.unique(second)) <= 2 < len(np.unique(first))


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-1.0, 2.0)])
def test_output_in_bounds_with_shape_dtype_and_ctx(name, bounds):
    low, high = bounds
    rng = np.random.RandomState(1)
    for shape in ((5, 1, 8, 8), (2, 3, 10, 12)):
        x = nd.array(low + (high - low) * rng.rand(*shape), dtype="float32")
        (d,) = parse_defense_spec(SPECS[name])
        out = d.transform(x, bounds)
        assert isinstance(out, nd.NDArray) and out.shape == x.shape and out.dtype == np.float32
        assert out.context == x.context
        values = out.asnumpy()
        assert np.isfinite(values).all() and values.min() >= low - 1e-5 and values.max() <= high + 1e-5


def test_defended_model_looks_like_a_classifier(tiny_model, tiny_batch):
    x, _ = tiny_batch
    defended = defend(tiny_model, "bitdepth:bits=4+median:size=3", gradient="naive")
    for attr in ("bounds", "num_classes", "ctx", "input_size", "folded", "mode_free", "arch"):
        assert getattr(defended, attr) == getattr(tiny_model, attr)
    assert "bitdepth:bits=4+median:size=3" in defended.describe() and "naive" in defended.describe()
    expected = tiny_model.predict(apply(MedianFilter(size=3), apply(BitDepthReduction(bits=4), x)))
    np.testing.assert_allclose(defended.predict(x, batch_size=5), expected, rtol=1e-5, atol=1e-6)
    report = defended.defense_report()
    assert [(d["name"], d["declared"], d["backward"]) for d in report["defenses"]] == [
        ("bitdepth", "bpda", "zero"), ("median", "bpda", "zero")]
    assert report["eot_samples"] == 1 and report["gradient"] == "naive"


def test_defended_model_rejects_bad_settings(tiny_model):
    with pytest.raises(ConfigError, match="gradient must be one of auto, naive, bpda, eot, got 'exact'"):
        defend(tiny_model, "jpeg", gradient="exact")
    with pytest.raises(ConfigError, match="eot_samples must be an integer >= 1, got 0"):
        defend(tiny_model, "noise", eot_samples=0)
    with pytest.raises(ConfigError, match="at least one defence"):
        DefendedClassifier(tiny_model, [])
    with pytest.raises(TypeError, match="declares an exact gradient but is not differentiable"):
        type("Bad", (Preprocessor,), {"gradient": "exact", "transform": lambda self, x, b: x})


# ------------------------------------------------------------------ each defence
def test_bitdepth_levels():
    x = np.random.RandomState(2).rand(4, 3, 8, 8).astype(np.float32)
    for bits in (1, 2, 3):
        out = apply(BitDepthReduction(bits=bits), x, (-1.0, 1.0))
        levels = np.unique(out)
        assert len(levels) <= 2**bits
        np.testing.assert_allclose((levels + 1) / 2 * (2**bits - 1), np.round((levels + 1) / 2 * (2**bits - 1)),
                                   atol=1e-5)
    eight_bit = np.round(x * 255) / 255
    np.testing.assert_allclose(apply(BitDepthReduction(bits=8), eight_bit), eight_bit, atol=1e-6)


def test_median_filter_keeps_constant_images_and_removes_salt():
    const = np.full((2, 3, 9, 9), 0.3, np.float32)
    np.testing.assert_allclose(apply(MedianFilter(size=3), const), const, atol=1e-7)
    salted = const.copy()
    salted[:, :, 4, 4] = 1.0
    np.testing.assert_allclose(apply(MedianFilter(size=3), salted), const, atol=1e-7)
    np.testing.assert_allclose(apply(MedianFilter(size=5), salted), const, atol=1e-7)


@pytest.mark.parametrize("size, shape", [(3, (28, 28)), (5, (9, 7)), (15, (5, 6))])
def test_differentiable_median_equals_scipy_with_its_reflected_border(size, shape):
    x = np.random.default_rng(size).random((2, 3) + shape).astype(np.float32)
    np.testing.assert_array_equal(differentiable_median(nd.array(x), size).asnumpy(), apply(MedianFilter(size=size), x))


def test_differentiable_median_gradient_matches_finite_differences():
    """Distinct pixel values: the median is locally linear, so central differences are exact up to rounding."""
    rng = np.random.default_rng(0)
    x = rng.permutation(36).reshape(1, 1, 6, 6).astype(np.float64) / 36
    w = rng.normal(size=(1, 1, 6, 6))
    xs = nd.array(x, dtype="float64")
    xs.attach_grad()
    with mx.autograd.record():
        loss = (differentiable_median(xs, 3) * nd.array(w, dtype="float64")).sum()
    loss.backward()
    h, numeric = 1e-3 / 36, np.zeros_like(x)
    for k in range(x.size):
        e = np.zeros(x.size)
        e[k] = h
        plus = differentiable_median(nd.array(x + e.reshape(x.shape), dtype="float64"), 3).asnumpy()
        minus = differentiable_median(nd.array(x - e.reshape(x.shape), dtype="float64"), 3).asnumpy()
        numeric.flat[k] = ((plus - minus) * w).sum() / (2 * h)
    np.testing.assert_allclose(xs.grad.asnumpy(), numeric, rtol=1e-6, atol=1e-8)
    assert np.count_nonzero(numeric) > 0


def test_median_bpda_pulls_the_gradient_back_through_the_selected_pixels(tiny_model, tiny_batch):
    x, y = tiny_batch
    defended = defend(tiny_model, "median:size=3", gradient="bpda")
    x_def = apply(defended.chain.defenses[0], x)
    g_model = nd.array(grad_of(tiny_model, x_def, y))
    xs = nd.array(x)
    xs.attach_grad()
    with mx.autograd.record():
        out = differentiable_median(xs, 3)
    out.backward(g_model)
    np.testing.assert_allclose(grad_of(defended, x, y), xs.grad.asnumpy(), rtol=1e-5, atol=1e-7)
    assert np.abs(xs.grad.asnumpy() - g_model.asnumpy()).max() > 1e-4  # not the identity backward


def test_spatial_smoothing_is_a_normalised_filter():
    const = np.full((1, 2, 7, 7), 0.7, np.float32)
    np.testing.assert_allclose(apply(SpatialSmoothing(size=5, sigma=2.0), const), const, atol=1e-6)
    kernel = SpatialSmoothing(size=3, sigma=0.5).kernel()
    assert kernel.sum() == pytest.approx(1.0) and kernel[1, 1] == kernel.max()
    impulse = np.zeros((1, 1, 7, 7), np.float32)
    impulse[0, 0, 3, 3] = 1.0
    np.testing.assert_allclose(apply(SpatialSmoothing(size=3), impulse)[0, 0, 2:5, 2:5], np.full((3, 3), 1 / 9),
                               atol=1e-6)


def test_jpeg_quality_100_is_close_to_identity_and_low_quality_is_not(mnist_test):
    x = mnist_test[0][:16]
    err100 = np.abs(apply(JPEGCompression(quality=100), x) - x)
    err10 = np.abs(apply(JPEGCompression(quality=10), x) - x)
    assert err100.mean() < 0.005 and err100.max() < 0.1
    assert err10.mean() > 5 * err100.mean()
    ramp = np.linspace(0, 1, 16, dtype=np.float32)
    rgb = np.stack([np.tile(ramp, (16, 1)), np.tile(ramp[:, None], (1, 16)), np.full((16, 16), 0.2, np.float32)])
    out = apply(JPEGCompression(quality=100), rgb[None])[0]
    assert np.abs(out - rgb).max() < 0.06  # smooth colours survive, in their channels
    assert np.abs(out[::-1] - rgb).max() > 0.5


def test_resize_pad_keeps_size_is_random_and_identity_at_ratio_1(mnist_test):
    x = mnist_test[0][:8]
    mx.random.seed(0)
    d = RandomResizePad(max_ratio=1.3)
    first, second = apply(d, x), apply(d, x)
    assert first.shape == x.shape and np.abs(first - second).max() > 0.1
    mx.random.seed(0)
    np.testing.assert_array_equal(apply(d, x), first)  # seeded by mx.random.seed
    np.testing.assert_allclose(apply(RandomResizePad(max_ratio=1.0), x), x, atol=1e-5)
    # The shrunk digit keeps its ink, up to interpolation, and the canvas border is the lower bound.
    assert first.sum(axis=(1, 2, 3)) == pytest.approx(x.sum(axis=(1, 2, 3)) / np.mean([1, 1.3]) ** 2, rel=0.35)


def test_gaussian_noise_statistics():
    x = np.full((8, 1, 16, 16), 0.5, np.float32)
    out = apply(GaussianNoise(sigma=0.05), x)
    assert abs(out.mean() - 0.5) < 0.005 and abs(out.std() - 0.05) < 0.005


def test_tv_minimisation_identity_and_smoothing():
    rng = np.random.RandomState(0)
    x = np.clip(0.5 + 0.2 * rng.randn(4, 1, 12, 12), 0, 1).astype(np.float32)
    np.testing.assert_allclose(apply(TVMinimization(keep=1.0, weight=0.0), x), x, atol=1e-6)
    out = apply(TVMinimization(keep=1.0, weight=0.1, steps=50), x)
    assert (total_variation(nd.array(out)).asnumpy() < 0.6 * total_variation(nd.array(x)).asnumpy()).all()
    dropped = apply(TVMinimization(keep=0.5, weight=0.0, steps=1), x)
    assert 0.3 < np.mean(np.isclose(dropped, x, atol=1e-6)) < 0.8  # about half the pixels kept exactly


def test_wrap_an_opencv_function_and_a_gluoncv_transform():
    import cv2
    from gluoncv.data.transforms.image import imresize

    x = np.random.RandomState(0).rand(3, 3, 12, 12).astype(np.float32)
    (blur,) = parse_defense_spec(SPECS["wrap"])
    u8 = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    expected = np.stack([cv2.GaussianBlur(img, (3, 3), 0) for img in u8]).transpose(0, 3, 1, 2) / 255.0
    np.testing.assert_allclose(apply(blur, x), expected, atol=1e-6)

    def down_up(img):
        return imresize(imresize(img, 6, 6), 12, 12)

    gcv = WrapDefense(fn=down_up, array="ndarray", pixels="uint8")
    out = apply(gcv, x)
    assert out.shape == x.shape and np.abs(out - x).mean() > 0.05
    assert gcv.gradient == "bpda" and not gcv.randomized


def test_exact_wrap_is_differentiated_through_ndarray_ops(tiny_model, tiny_batch):
    x, y = tiny_batch
    wrap = WrapDefense(fn=lambda img: img * 0.5 + 0.25, array="ndarray", gradient="exact")
    defended = DefendedClassifier(tiny_model, [wrap])
    assert defended.backwards == ["exact"]
    np.testing.assert_allclose(grad_of(defended, x, y), 0.5 * grad_of(tiny_model, x * 0.5 + 0.25, y), rtol=1e-4,
                               atol=1e-7)


def test_wrap_rejects_bad_functions():
    x = nd.array(np.zeros((1, 1, 4, 4), np.float32))
    with pytest.raises(ConfigError, match=r"fn returned shape \(2, 2, 1\) for an image of shape \(4, 4, 1\)"):
        WrapDefense(fn=lambda img: img[:2, :2]).transform(x, (0.0, 1.0))
    with pytest.raises(ConfigError, match="exact or differentiable wrap needs array=ndarray and pixels=float"):
        WrapDefense(fn=lambda img: img, gradient="exact")
    with pytest.raises(ConfigError, match="cannot import fn 'nomodule_xyz:f'"):
        WrapDefense(fn="nomodule_xyz:f")


# ------------------------------------------------------------------ specs
def test_parse_chain_and_round_trip():
    chain = parse_defense_spec(" JPEG:quality=75 + bitdepth:bits=4+median:size=3+noise:sigma=8/255+spatial")
    assert [type(d) for d in chain] == [JPEGCompression, BitDepthReduction, MedianFilter, GaussianNoise,
                                        SpatialSmoothing]
    assert chain[0].quality == 75 and chain[1].bits == 4 and chain[3].sigma == pytest.approx(8 / 255)
    spec = DefenseChain(chain).spec
    assert spec.startswith("jpeg:quality=75,bpda=smooth+bitdepth:bits=4+median:size=3,bpda=select+noise:sigma=0.0313")
    assert DefenseChain(parse_defense_spec(spec)).spec == spec
    assert isinstance(parse_defense_spec("xie:max-ratio=1.1")[0], RandomResizePad)


@pytest.mark.parametrize("spec,pattern", [
    ("jpg", r"unknown defense 'jpg' \(did you mean jpeg\?\); valid names: bitdepth, jpeg, median"),
    ("jpeg:qualty=75", "defense jpeg does not take qualty; it accepts quality, bpda"),
    ("jpeg:bpda=cubic", "jpeg bpda must be 'smooth' or 'identity', got 'cubic'"),
    ("jpeg:quality=0", r"defense jpeg: quality must be an integer in 1..100, got 0"),
    ("bitdepth:bits=abc", "defense bitdepth: bits must be an integer in 1..16, got 'abc'"),
    ("median:size=4", "defense median: size must be odd, got 4"),
    ("noise:sigma=-1", r"defense noise: sigma must be a number > 0, got -1"),
    ("resize-pad:max_ratio=0.5", r"defense resize-pad: max_ratio must be a number in \[1, 4\], got 0.5"),
    ("jpeg:75", "defense jpeg: parameters must be key=value, got '75'"),
    ("jpeg:quality=70,quality=80", "parameter quality given twice"),
    ("", "empty defense spec"),
    ("jpeg++median", "empty defense in spec"),
    ("wrap", "defense wrap: .*fn"),
])
def test_bad_specs_name_the_problem(spec, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_defense_spec(spec)


# ------------------------------------------------------------------ attacks on defended models
def test_every_attack_keeps_its_contract_on_a_defended_model(tiny_model, tiny_batch):
    """The attack invariants (bounds, ball, shape, dtype, success from a real pass) through a BPDA + exact chain."""
    from gluon_robust.attacks import ATTACKS

    from test_attack_invariants import EPS, _build, _numpy_distance

    x, y = tiny_batch
    x, y = x[:6], y[:6]
    defended = defend(tiny_model, "bitdepth:bits=5+spatial:size=3")
    for name in ATTACKS.names():
        norm = ATTACKS.factory(name).norms[0]
        attack = _build(name, norm)
        x_in = nd.array(x)
        result = attack(defended, x_in, y)
        x_adv = result.x_adv.asnumpy()
        assert result.x_adv.shape == x.shape and result.x_adv.dtype == np.float32, name
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0, name
        if attack.eps is not None:
            assert _numpy_distance(norm, x_adv - x).max() <= EPS[norm] * (1 + 1e-5) + 1e-6, name
        pred = defended.predict(x_adv).argmax(axis=1)
        np.testing.assert_array_equal(result.predictions, pred, err_msg=name)
        np.testing.assert_array_equal(result.success, pred != y, err_msg=name)


def test_naive_pgd_through_bitdepth_overstates_robustness(mnist_test):
    """On real digits: PGD with naive gradients breaks few points; with BPDA it breaks many more."""
    from gluon_robust.attacks import get_attack
    from gluon_robust.model import load_classifier

    model = load_classifier("mnist_resnet20")
    x, y = mnist_test[0][:24], mnist_test[1][:24]
    pgd = get_attack("pgd", eps=0.2, steps=10)
    naive = pgd(defend(model, "bitdepth:bits=3", gradient="naive"), x, y)
    adaptive = pgd(defend(model, "bitdepth:bits=3", gradient="bpda"), x, y)
    assert adaptive.success.mean() >= naive.success.mean() + 0.4


def test_evaluate_records_the_gradient_path_and_eot_samples(tiny_model, tiny_batch, tmp_path):
    from gluon_robust.data import ArraySource
    from gluon_robust.evaluation import evaluate
    from gluon_robust.evaluation.sanity import SanityWarning

    x, y = tiny_batch
    source = ArraySource(x[:8], y[:8], name="tiny")
    defended = defend(tiny_model, "noise:sigma=0.02", eot_samples=2)
    with pytest.warns(SanityWarning, match="the model is random"):
        report = evaluate(defended, source, attacks=["fgsm", "deepfool"], eps=[0.1], out_dir=tmp_path,
                          progress=False, probe_size=4)
    assert report["defense"]["summary"] == "auto (noise: exact; EOT x2)"
    assert report["defense"]["stage_eot_samples"] == {"fgsm": 2, "deepfool": None}
    assert report["stages"][0]["options"] == {"eot_samples": 2}
    markdown = (tmp_path / "report.md").read_text()
    assert "gradient path: auto: noise: exact (declared eot); EOT over 2 samples" in markdown
    assert "gradient path" in (tmp_path / "report.html").read_text()
