"""The model wrapper: the one place where preprocessing happens.

A :class:`Classifier` takes pixel-space inputs (float32, NCHW, inside
``bounds``), normalises them with a per-channel mean and std and calls the
network. Because normalisation lives inside the model, an epsilon is always in
pixel units: ``8/255`` means eight grey levels.

:func:`load_classifier` builds one from a GluonCV zoo name, a model config
YAML, any Gluon ``HybridBlock`` or an exported ``net-symbol.json``, and by
default folds BatchNorm away (see :mod:`gluon_robust.folding`) so that input
gradients are correct and fast.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import mxnet as mx
import numpy as np
from mxnet import gluon

from .data.labels import ClassTable, LabelsSpec, class_table_for, load_class_table
from .config import ModelConfig, family_defaults, load_config, parse_input_size, resolve_config_path
from .errors import ConfigError, ModelError
from .folding import fold_batchnorm, symbol_block
from .integrity import refuse_pickle
from .validation import InvalidValue, check_int
from .zoo import build_zoo_net, check_zoo_name, load_params_into, zoo_names

__all__ = [
    "Classifier", "FirstOutput", "load_classifier", "trainable_classifier", "replace_head", "check_trainable",
    "HEAD_ATTRIBUTES", "ModelSource", "predict_in_chunks",
]

logger = logging.getLogger(__name__)

ModelSource = Union[str, os.PathLike, ModelConfig, gluon.HybridBlock]


def _as_channel_array(values: Sequence[float] | float, channels: int, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float32).reshape(-1)
    if arr.size not in (1, channels):
        raise ConfigError(f"{name} has {arr.size} values but the input has {channels} channels")
    if name == "std" and np.any(arr <= 0):
        raise ConfigError(f"std must be positive, got {arr.tolist()}")
    return arr.reshape(1, -1, 1, 1)


class Classifier(gluon.HybridBlock):
    """A classifier on pixel-space inputs, with normalisation inside.

    Parameters
    ----------
    net : mxnet.gluon.HybridBlock
        The initialised network; it sees normalised inputs.
    num_classes : int
        Number of output scores.
    input_size : tuple of int, optional
        ``(C, H, W)`` of one input, when known.
    mean, std : float or sequence of float
        Normalisation ``(x - mean) / std``: one value or one per channel.
    bounds : tuple of float
        Valid pixel range of the inputs, ``(low, high)``.
    ctx : mxnet.Context
        Where the network's parameters live and inputs are expected.
    arch : str, optional
        Architecture name for logs and reports; defaults to the net's class name.

    Attributes
    ----------
    folded : bool
        Whether BatchNorm was folded away (set by :func:`load_classifier`).
    frozen : bool
        Whether the classifier was built for evaluation only (every parameter
        ``grad_req='null'``; set by :func:`load_classifier`). Training helpers
        refuse it (see :func:`check_trainable`).
    mode_free : bool
        Whether the network computes the same function in train and eval mode
        (folded, with no BatchNorm or Dropout left); attacks then record
        gradients in train mode, see :func:`gluon_robust.attacks.base.gradient_recording`.
    class_table : ClassTable or None
        The name (and synset) of each output, when known (set by
        :func:`load_classifier`); see :mod:`gluon_robust.data.labels`.
    """

    def __init__(
        self,
        net: gluon.HybridBlock,
        *,
        num_classes: int,
        input_size: Optional[Sequence[int]] = None,
        mean: Sequence[float] | float = 0.0,
        std: Sequence[float] | float = 1.0,
        bounds: Tuple[float, float] = (0.0, 1.0),
        ctx: Optional[mx.Context] = None,
        arch: Optional[str] = None,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        low, high = (float(b) for b in bounds)
        if not low < high:
            raise ConfigError(f"bounds must satisfy low < high, got {tuple(bounds)}")
        self.num_classes = int(num_classes)
        self.input_size = parse_input_size(input_size) if input_size is not None else None
        self.bounds = (low, high)
        self.ctx = ctx if ctx is not None else mx.cpu()
        self.folded = False
        self.frozen = False
        self.mode_free = False
        self.class_table: Optional[ClassTable] = None
        self.arch = arch or type(net).__name__
        channels = self.input_size[0] if self.input_size else max(np.size(mean), np.size(std))
        with self.name_scope():
            self.net = net
            self.mean = self.params.get_constant("mean", _as_channel_array(mean, channels, "mean"))
            self.std = self.params.get_constant("std", _as_channel_array(std, channels, "std"))
        self.mean.initialize(ctx=self.ctx)
        self.std.initialize(ctx=self.ctx)

    def hybrid_forward(self, F: Any, x: Any, mean: Any, std: Any) -> Any:  # noqa: N803 (Gluon's signature)
        return self.net(F.broadcast_div(F.broadcast_sub(x, mean), std))

    @property
    def class_names(self) -> Optional[list]:
        """The name of each output (``model.class_names[3]``), or None when unknown."""
        return list(self.class_table.names) if self.class_table is not None else None

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Logits for a NumPy batch, computed in eval mode in chunks of ``batch_size``."""
        return predict_in_chunks(self, x, self.ctx, self.num_classes, batch_size)

    def describe(self) -> str:
        """One line saying what this classifier is."""
        size = "x".join(map(str, self.input_size)) if self.input_size else "any size"
        return (
            f"{self.arch} | {self.num_classes} classes | input {size} | bounds {self.bounds} | "
            f"BatchNorm {'folded' if self.folded else 'as is'} | {self.ctx}"
        )


class FirstOutput(gluon.HybridBlock):
    """The first output of a network that returns several: its classifier's logits.

    Some classifiers also return auxiliary outputs (GluonCV's NASNet returns
    ``(logits, auxiliary_logits)`` from its auxiliary training head). GluonCV puts the
    main classifier first, so the first output is what is classified and attacked;
    the others are dropped, and folding prunes the layers only they used.

    Parameters
    ----------
    net : mxnet.gluon.HybridBlock
        The network; it returns a list or tuple whose first item is ``(N, classes)``.
    """

    def __init__(self, net: gluon.HybridBlock) -> None:
        super().__init__()
        with self.name_scope():
            self.net = net

    def hybrid_forward(self, F: Any, x: Any) -> Any:  # noqa: N803 (Gluon's signature)
        return self.net(x)[0]


def _symbol_source(path: Path, params: Optional[str], ctx: mx.Context) -> gluon.SymbolBlock:
    """Load an exported ``net-symbol.json`` (+ ``net-0000.params``) as a SymbolBlock."""
    if not path.is_file():
        raise ModelError(f"symbol file not found: {path}")
    if params is not None and not Path(params).is_file():
        raise ModelError(f"params file not found: {params}")
    if params is None:
        guess = Path(str(path).replace("-symbol.json", "-0000.params"))
        if guess == path or not guess.is_file():
            raise ModelError(f"no params for {path}: pass --params FILE (expected {guess.name} beside it)")
        params = str(guess)
    refuse_pickle(path, "symbol file", ModelError, fix="pass the -symbol.json written by export")
    refuse_pickle(params, "params file", ModelError, fix="pass the .params file written by export")
    try:
        symbol = mx.sym.load(str(path))
    except mx.base.MXNetError:
        raise ModelError(f"cannot read symbol file {path}: not a valid MXNet symbol JSON") from None
    try:
        loaded = mx.nd.load(params)
    except mx.base.MXNetError:
        raise ModelError(f"cannot read params file {params}: not a valid MXNet .params file") from None
    names = {k.split(":", 1)[-1] for k in loaded}
    inputs = [n for n in symbol.list_inputs() if n not in names]
    if len(inputs) != 1:
        raise ModelError(f"symbol {path} must have exactly one input not in the params, found {inputs}")
    stripped = {k.split(":", 1)[-1]: v for k, v in loaded.items()}
    return symbol_block(symbol, stripped, ctx, input_name=inputs[0], hybridize=False, freeze=False)


def _resolve(
    source: ModelSource, classes: Optional[int], params: Optional[str], pretrained: bool, ctx: mx.Context,
    initializer: Optional[mx.init.Initializer] = None,
) -> Tuple[gluon.HybridBlock, dict]:
    """Build the network and the defaults (mean, std, input size, classes) its source implies.

    Without weights, a zoo network is initialised with ``initializer`` (default
    ``Xavier()``, with a warning: evaluating random weights is rarely meant);
    given one (training from scratch), a user block's uninitialised parameters
    are initialised with it too.
    """
    if isinstance(source, gluon.HybridBlock):
        if params:
            load_params_into(source, params, ctx)
        elif initializer is not None:
            _initialise_missing(source, initializer, ctx)
        elif any(p._deferred_init for p in source.collect_params().values()):  # noqa: SLF001 -- no public flag
            # shapes still unknown: the weights only come into being at the first forward pass, so they are
            # the initialiser's random draw, not trained ones
            logger.warning("%s's parameters are only initialised (deferred, never run or loaded): the model has "
                           "random weights and its accuracy will be at chance; pass params=FILE or load weights "
                           "first", type(source).__name__)
        return source, {"arch": type(source).__name__}
    if isinstance(source, ModelConfig):
        config = source
    else:
        text = str(source)
        if text.endswith(".json"):
            return _symbol_source(Path(text), params, ctx), {"arch": Path(text).name.replace("-symbol.json", "")}
        if text.endswith((".yaml", ".yml")) or (text not in zoo_names() and _is_bundled_config(text)):
            config = load_config(text)
        else:  # a zoo name: the config its family implies
            defaults = family_defaults(text)
            config = ModelConfig(
                model=check_zoo_name(text), classes=classes or defaults["classes"], mean=defaults["mean"],
                std=defaults["std"], input_size=defaults["input_size"],
            )
    zoo_name = not isinstance(source, ModelConfig) and config.source is None  # a bare zoo name, not a config file
    net = build_zoo_net(config.model, classes or config.classes, pretrained and not (params or config.params), ctx)
    weights = params or config.params
    if weights:
        load_params_into(net, weights, ctx)
    elif not pretrained:
        if initializer is None:
            logger.warning("no weights given for %s: the model is freshly initialised with random weights and its "
                           "accuracy will be at chance; pass --params FILE or --pretrained", config.model)
        else:
            logger.info("no weights given for %s: training starts from fresh weights", config.model)
        net.initialize(initializer or mx.init.Xavier(), ctx=ctx)
    return net, {
        "arch": config.model,
        "classes": config.classes,
        "mean": config.mean,
        "std": config.std,
        "bounds": config.bounds,
        "input_size": config.input_size,
        "family_table": zoo_name,  # a config describes its own model, whose classes may not be the family's
    }


def _check_finite_weights(net: gluon.Block, params: Optional[str | os.PathLike]) -> None:
    """Raise ModelError if an initialised parameter holds NaN or infinity: every number computed with it is wrong.

    Parameters whose initialisation is still deferred (shape unknown) are skipped.
    """
    bad = []
    for name, param in net.collect_params().items():
        try:
            data = param.data(param.list_ctx()[0])
        except (RuntimeError, gluon.parameter.DeferredInitializationError):  # not (yet) initialised
            continue
        if not np.isfinite(data.asnumpy()).all():
            bad.append(name)
    if bad:
        where = f"the weights in {params}" if params else "the model's weights"
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        count = f"{len(bad)} parameter{'s' if len(bad) > 1 else ''}"
        raise ModelError(f"{where} hold NaN or infinite values ({count}: {shown}), so every prediction would be "
                         "wrong; the training that wrote them probably diverged: use other weights (--params)")


def _initialise_missing(net: gluon.Block, initializer: mx.init.Initializer, ctx: mx.Context) -> None:
    """Initialise the parameters of ``net`` that are not initialised yet (deferred ones count as initialised)."""
    for param in net.collect_params().values():
        try:
            param.list_ctx()
        except RuntimeError:  # "Parameter ... has not been initialized"
            param.initialize(default_init=initializer, ctx=ctx)  # its own init (zeros for biases) first


def _is_bundled_config(name: str) -> bool:
    try:
        resolve_config_path(name)
    except ConfigError:
        return False
    return True


def _infer_classes(net: gluon.HybridBlock, input_size: Tuple[int, int, int], ctx: mx.Context) -> Tuple[int, int]:
    """Run one forward pass on zeros; return the number of class scores and of outputs."""
    try:
        out = net(mx.nd.zeros((1,) + tuple(input_size), ctx=ctx))
    except mx.base.MXNetError as err:  # a RuntimeError subclass, so caught first
        detail = str(err).strip().splitlines()
        reason = next((line for line in reversed(detail) if line.strip()), type(err).__name__)
        raise ModelError(f"the model does not accept inputs of size {tuple(input_size)}: {reason}") from None
    except RuntimeError as err:  # Gluon's "Parameter ... has not been initialized"
        raise ModelError(f"the model's parameters are not initialised ({str(err).splitlines()[0]}); pass params") from None
    outputs = len(out) if isinstance(out, (list, tuple)) else 1
    if isinstance(out, (list, tuple)):
        if not out or not isinstance(out[0], mx.nd.NDArray):
            raise ModelError(f"the model returns {type(out).__name__} of {outputs}; a classifier returns (N, classes)")
        out = out[0]
    if out.ndim != 2:
        which = "its first output has" if outputs > 1 else "the model returns"
        raise ModelError(f"{which} shape {out.shape}; a classifier returns (N, classes)")
    return int(out.shape[1]), outputs


def _class_scores(
    net: gluon.HybridBlock, size: Optional[Tuple[int, int, int]], expected: Optional[int], ctx: mx.Context
) -> Tuple[gluon.HybridBlock, int]:
    """The network to wrap (its first output when it returns several) and its number of class scores.

    With an input size, one forward pass on zeros tells the number of scores
    (and finishes deferred initialisation), which must equal ``expected``
    when that is known; without one, ``expected`` is taken on trust.
    """
    if size is None:
        if expected is None:
            raise ModelError("cannot tell the number of classes: pass classes= or input_size=")
        return net, expected
    with mx.autograd.pause():
        actual, outputs = _infer_classes(net, size, ctx)
    if outputs > 1:
        logger.info("the model returns %d outputs; the first (the classifier's logits) is used", outputs)
        net = FirstOutput(net)
    if expected is not None and actual != expected:
        raise ModelError(f"the model outputs {actual} class scores but {expected} classes were expected")
    return net, actual


def _wrap(
    net: gluon.HybridBlock, num_classes: int, size: Optional[Tuple[int, int, int]], defaults: dict, *,
    mean: Optional[Sequence[float] | float], std: Optional[Sequence[float] | float],
    bounds: Optional[Tuple[float, float]], labels: Optional[Any], ctx: mx.Context,
) -> Classifier:
    """The Classifier around ``net``: explicit preprocessing, else the source's defaults; its class table."""
    model = Classifier(
        net,
        num_classes=num_classes,
        input_size=size,
        mean=mean if mean is not None else _family_stat(defaults.get("mean", 0.0), size),
        std=std if std is not None else _family_stat(defaults.get("std", 1.0), size),
        bounds=bounds if bounds is not None else defaults.get("bounds", (0.0, 1.0)),
        ctx=ctx,
        arch=defaults.get("arch"),
    )
    if labels is not None:
        model.class_table = load_class_table(labels, num_classes)
    elif defaults.get("family_table"):
        model.class_table = class_table_for(defaults.get("arch"), num_classes)
    return model


def load_classifier(
    source: ModelSource,
    *,
    params: Optional[str | os.PathLike] = None,
    pretrained: bool = False,
    classes: Optional[int] = None,
    mean: Optional[Sequence[float] | float] = None,
    std: Optional[Sequence[float] | float] = None,
    bounds: Optional[Tuple[float, float]] = None,
    input_size: Optional[int | Sequence[int]] = None,
    ctx: Optional[mx.Context] = None,
    fold: bool = True,
    hybridize: bool = True,
    labels: Optional[LabelsSpec] = None,
) -> Classifier:
    """Build a :class:`Classifier` on pixel inputs from any model source.

    Parameters
    ----------
    source : str, path, ModelConfig or mxnet.gluon.HybridBlock
        A ``gluoncv.model_zoo`` name (``"resnet50_v1"``), a config YAML (or the
        name of a bundled one, ``"mnist_resnet20"``), an exported
        ``net-symbol.json``, or an initialised Gluon block.
    params : str or path, optional
        A ``.params`` file to load (``save_parameters`` or ``export`` format).
        Overrides the config's ``params``.
    pretrained : bool
        Use GluonCV's published weights from the offline cache.
    classes : int, optional
        Number of classes; checked against the model's actual output.
    mean, std : float or sequence of float, optional
        Normalisation; defaults come from the config or the zoo family
        (ImageNet or CIFAR statistics), else 0 and 1.
    bounds : tuple of float, optional
        Pixel range, default ``(0, 1)``.
    input_size : int or sequence of int, optional
        ``(C, H, W)``; needed for user blocks whose BatchNorm cannot all be folded.
    ctx : mxnet.Context, optional
        Device; default CPU.
    fold : bool
        Fold BatchNorm away (exact; correct and fast input gradients). With
        ``False`` the network is used as it is, and MXNet's eval-mode BatchNorm
        gradients are wrong.
    hybridize : bool
        Hybridise the classifier.
    labels : ClassTable, sequence of str or path, optional
        The name of each output: a :class:`~gluon_robust.data.labels.ClassTable`,
        a list of names, or a JSON/text file of them (see
        :func:`~gluon_robust.data.labels.load_class_table`); its length must
        be the number of outputs. Default for a zoo name: the family's table
        (ImageNet for 1,000 outputs, CIFAR-10 for a ``cifar_*`` net with 10);
        for a config file, a block or a symbol file: none.

    Returns
    -------
    Classifier
        In eval mode, with every parameter frozen (``grad_req='null'``).

    Raises
    ------
    ModelError, ConfigError
        For an unknown name, missing or unfitting weights, or a wrong class count.

    Examples
    --------
    >>> model = load_classifier("mnist_resnet20")
    >>> model = load_classifier("cifar_resnet20_v1", params="net.params", ctx=mx.gpu(0))
    """
    ctx = ctx if ctx is not None else mx.cpu()
    if isinstance(source, str) and not source.strip():
        raise ModelError("no model given: pass a zoo name, a config file, a symbol file or a block")
    net, defaults = _resolve(source, classes, str(params) if params else None, pretrained, ctx)
    _check_finite_weights(net, params)
    size = parse_input_size(input_size) if input_size is not None else defaults.get("input_size")
    net, actual = _class_scores(net, size, classes or defaults.get("classes"), ctx)
    if fold:
        net = fold_batchnorm(net, input_shape=(1,) + tuple(size) if size else None, ctx=ctx, hybridize=False)
    else:
        logger.warning("BatchNorm not folded: MXNet 1.9.1 computes wrong eval-mode input gradients through it")
        net.collect_params().setattr("grad_req", "null")
    model = _wrap(net, actual, size, defaults, mean=mean, std=std, bounds=bounds, labels=labels, ctx=ctx)
    model.folded = fold
    model.frozen = True
    model.mode_free = fold and net.fold_report.mode_free
    if hybridize:
        model.hybridize(static_alloc=True)
    logger.info("model: %s", model.describe())
    return model

#: Attributes under which GluonCV classification networks keep their last (class-score) layer, in lookup order.
HEAD_ATTRIBUTES = ("output", "fc", "classifier")

#: What a frozen evaluation model passed to training gets told.
FROZEN_MESSAGE = (
    "this model was loaded for evaluation (BatchNorm folded, parameters frozen) and cannot be trained; "
    "build a trainable one with gluon_robust.trainable_classifier(...)"
)


def check_trainable(model: Any) -> None:
    """Refuse a model built for evaluation before a training step touches it.

    A :func:`load_classifier` model has BatchNorm folded into constants and
    every parameter frozen (``grad_req='null'``); ``gluon.Trainer`` and
    ``backward`` would fail on it with MXNet errors that do not say why.

    Raises
    ------
    ModelError
        If ``model`` (or the classifier a defence wraps) is frozen or folded.
    """
    inner = getattr(model, "model", None)  # a DefendedClassifier wraps the classifier it defends
    for block in (model, inner):
        if block is None:
            continue
        if getattr(block, "frozen", False) or getattr(block, "folded", False) or hasattr(
            getattr(block, "net", None), "fold_report"
        ):
            raise ModelError(FROZEN_MESSAGE)


def replace_head(net: gluon.HybridBlock, classes: int, *, ctx: Optional[mx.Context] = None) -> str:
    """Replace a classification network's last layer by a fresh ``classes``-way one, for fine-tuning.

    The layer found first among :data:`HEAD_ATTRIBUTES` (``net.output`` for
    most GluonCV classifiers, ``net.fc`` for ResNet-V1b, ResNeSt and Xception,
    ``net.classifier`` elsewhere) must be a ``Dense`` layer; it is replaced by
    a new ``nn.Dense(classes)`` created under the network's name scope and
    initialised with ``Xavier()`` (drawn from MXNet's global generator at the
    first forward pass: seed it with ``mx.random.seed`` for a reproducible head).

    Parameters
    ----------
    net : mxnet.gluon.HybridBlock
        A (typically pretrained) classification network.
    classes : int
        Number of classes of the new head (at least 2).
    ctx : mxnet.Context, optional
        Where the new head's parameters live; default CPU.

    Returns
    -------
    str
        The attribute that was replaced.

    Raises
    ------
    ModelError
        If the network has no Dense head under a known attribute (e.g.
        SqueezeNet and MobileNetV2/V3 end with a 1x1 convolution).

    Examples
    --------
    >>> net = gluoncv.model_zoo.get_model("resnet18_v1", pretrained=True)
    >>> replace_head(net, 5)
    'output'
    """
    classes = check_int("new_classes", classes, minimum=2)
    for attribute in HEAD_ATTRIBUTES:
        layer = getattr(net, attribute, None)
        if isinstance(layer, gluon.nn.Dense):
            with net.name_scope():
                head = gluon.nn.Dense(classes)
            setattr(net, attribute, head)
            head.initialize(mx.init.Xavier(), ctx=ctx if ctx is not None else mx.cpu())
            logger.info("replaced %s.%s by a fresh %d-class Dense layer", type(net).__name__, attribute, classes)
            return attribute
    found = {a: type(getattr(net, a)).__name__ for a in HEAD_ATTRIBUTES if getattr(net, a, None) is not None}
    raise ModelError(
        f"cannot replace the head of {type(net).__name__}: it has no Dense layer under "
        f"{', '.join(HEAD_ATTRIBUTES)} (found {found or 'none'}); replace its last layer yourself and pass the block"
    )


def _context_list(ctx: Optional[mx.Context | Sequence[mx.Context]]) -> List[mx.Context]:
    if ctx is None:
        return [mx.cpu()]
    contexts = [ctx] if isinstance(ctx, mx.Context) else list(ctx)
    if not contexts or not all(isinstance(c, mx.Context) for c in contexts):
        raise InvalidValue("ctx", ctx, "an mxnet Context or a non-empty list of them")
    return contexts


def trainable_classifier(
    source: ModelSource,
    *,
    params: Optional[str | os.PathLike] = None,
    pretrained: bool = False,
    classes: Optional[int] = None,
    new_classes: Optional[int] = None,
    mean: Optional[Sequence[float] | float] = None,
    std: Optional[Sequence[float] | float] = None,
    bounds: Optional[Tuple[float, float]] = None,
    input_size: Optional[int | Sequence[int]] = None,
    ctx: Optional[mx.Context | Sequence[mx.Context]] = None,
    labels: Optional[LabelsSpec] = None,
    seed: int = 0,
    hybridize: bool = True,
) -> Classifier:
    """Build a :class:`Classifier` to *train*: BatchNorm kept, parameters trainable, normalisation inside.

    The training counterpart of :func:`load_classifier`: the same sources and
    the same defaults (mean, std, bounds and input size from the config or
    the zoo family), but nothing is folded or frozen, so the result goes
    straight into ``gluon.Trainer(model.collect_params(), ...)``, a training
    method (:func:`gluon_robust.training.get_method`) or
    :func:`~gluon_robust.training.loop.train_adversarial`. ``gluon-robust
    train`` builds its model with it.

    Parameters
    ----------
    source : str, path, ModelConfig or mxnet.gluon.HybridBlock
        A ``gluoncv.model_zoo`` name, a config YAML or bundled config name, an
        exported ``net-symbol.json``, or a Gluon block (its uninitialised
        parameters are initialised).
    params : str or path, optional
        Starting weights (``.params``); overrides the config's.
    pretrained : bool
        Start from GluonCV's published weights (offline cache).
    classes : int, optional
        Number of classes the network is built with (default: the config's
        or the zoo family's).
    new_classes : int, optional
        Fine-tuning: replace the network's last layer by a fresh
        ``new_classes``-way Dense layer (see :func:`replace_head`) after the
        weights are loaded.
    mean, std, bounds, input_size, labels
        As for :func:`load_classifier`.
    ctx : mxnet.Context or list of them, optional
        Device(s) the parameters live on; default CPU. The first is
        ``model.ctx``; a list prepares data-parallel training with
        ``split_and_load``.
    seed : int
        Seeds MXNet's generator before any weight is drawn (fresh weights and
        the new head), so that the same call gives the same model.
    hybridize : bool
        Hybridise the classifier (``static_alloc``).

    Returns
    -------
    Classifier
        With ``folded = False`` and ``frozen = False``; every parameter that
        has a gradient has ``grad_req='write'``.

    Raises
    ------
    ModelError, ConfigError
        For an unknown name, missing or unfitting weights, a wrong class
        count or a head that cannot be replaced.

    Examples
    --------
    Fine-tune a pretrained ImageNet network on a 5-class image folder:

    >>> model = trainable_classifier("resnet18_v1", pretrained=True, new_classes=5)
    >>> trainer = gluon.Trainer(model.collect_params(), "adam", {"learning_rate": 1e-4})
    """
    contexts = _context_list(ctx)
    seed = check_int("seed", seed, minimum=0, maximum=2 ** 32 - 1)
    if new_classes is not None:
        new_classes = check_int("new_classes", new_classes, minimum=2)
    if isinstance(source, str) and not source.strip():
        raise ModelError("no model given: pass a zoo name, a config file, a symbol file or a block")
    mx.random.seed(seed)
    net, defaults = _resolve(source, classes, str(params) if params else None, pretrained, contexts[0],
                             initializer=mx.init.Xavier(magnitude=2.0))
    if new_classes is not None:
        replace_head(net, new_classes, ctx=contexts[0])
    _check_finite_weights(net, params)
    size = parse_input_size(input_size) if input_size is not None else defaults.get("input_size")
    net, actual = _class_scores(net, size, new_classes or classes or defaults.get("classes"), contexts[0])
    net.collect_params().setattr("grad_req", "write")  # BatchNorm running statistics stay 'null'
    model = _wrap(net, actual, size, defaults, mean=mean, std=std, bounds=bounds, labels=labels, ctx=contexts[0])
    _plain_layout(model, contexts)
    if hybridize:
        model.hybridize(static_alloc=True)
    logger.info("trainable model: %s", model.describe())
    return model


def _plain_layout(block: gluon.Block, contexts: Sequence[mx.Context]) -> None:
    """Put every initialised parameter of ``block`` on ``contexts`` as a fresh array in MXNet's default layout.

    The forward pass that infers the number of classes runs in inference
    mode, where MKLDNN reorders convolution weights in place into its blocked
    layout. Such an array trains locally but cannot be broadcast through a
    distributed kvstore (the server never stores it: "init N first"), so a
    trainable model hands its optimizer plain copies.
    """
    for param in block.collect_params().values():
        if param._data is None:  # noqa: SLF001 -- deferred, drawn later in the default layout
            continue
        values = param.data(param.list_ctx()[0]).asnumpy()
        param.reset_ctx(list(contexts))
        param.set_data(mx.nd.array(values, ctx=contexts[0], dtype=param.dtype))


def _family_stat(value: Sequence[float] | float, size: Optional[Tuple[int, int, int]]) -> Sequence[float] | float:
    """A family's per-channel mean or std, averaged to one value for inputs of another channel count.

    A zoo net given 1-channel data (a 1x28x28 npz for ``cifar_resnet20_v1``)
    normalises it with the average of the family's three channel statistics.
    """
    values = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if size is not None and values.size not in (1, size[0]):
        return float(values.mean())
    return value


def predict_in_chunks(
    block: Callable[[mx.nd.NDArray], mx.nd.NDArray], x: np.ndarray, ctx: mx.Context, num_classes: int,
    batch_size: int = 256,
) -> np.ndarray:
    """``block``'s outputs for a NumPy batch as one array, in eval mode, not recorded, ``batch_size`` at a time."""
    out = []
    with mx.autograd.pause(train_mode=False):
        for start in range(0, len(x), batch_size):
            chunk = mx.nd.array(x[start : start + batch_size], ctx=ctx, dtype="float32")
            out.append(block(chunk).asnumpy())
    return np.concatenate(out) if out else np.zeros((0, num_classes), np.float32)
