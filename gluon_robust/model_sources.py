"""Where a classifier's network comes from: a zoo name, a config, a symbol file or a block.

:func:`_resolve` builds the network and the defaults its source implies (mean,
std, input size, classes); :func:`_class_scores` checks its output and
:func:`_wrap` puts it in a :class:`~gluon_robust.classifier.Classifier`. Used
by :func:`~gluon_robust.model.load_classifier` (evaluation) and
:func:`~gluon_robust.trainable.trainable_classifier` (training).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

import mxnet as mx
import numpy as np
from mxnet import gluon

from .classifier import Classifier, FirstOutput
from .config import ModelConfig, family_defaults, load_config, resolve_config_path
from .data.labels import class_table_for, load_class_table
from .errors import ConfigError, ModelError
from .integrity import refuse_pickle
from .tracing import symbol_block
from .zoo import build_zoo_net, check_zoo_name, load_params_into, zoo_names

__all__ = ["ModelSource"]

logger = logging.getLogger("gluon_robust.model")

ModelSource = Union[str, os.PathLike, ModelConfig, gluon.HybridBlock]


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


def _family_stat(value: Sequence[float] | float, size: Optional[Tuple[int, int, int]]) -> Sequence[float] | float:
    """A family's per-channel mean or std, averaged to one value for inputs of another channel count.

    A zoo net given 1-channel data (a 1x28x28 npz for ``cifar_resnet20_v1``)
    normalises it with the average of the family's three channel statistics.
    """
    values = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if size is not None and values.size not in (1, size[0]):
        return float(values.mean())
    return value
