"""What ``gluon-robust train`` builds from its :class:`~gluon_robust.training.options.TrainConfig`:
the data, the method, the model, the curriculum and the guard.

A private module of :mod:`gluon_robust.commands.train` (it imports MXNet, so
the command imports it only when it runs).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Tuple

import mxnet as mx

from ..config import ModelConfig, family_defaults, load_config
from ..data import DataSource, load_data
from ..errors import ConfigError, ModelError
from ..model import Classifier, load_classifier, trainable_classifier
from ..training import TRAINING_METHODS, make_method
from ..training.adversarial import TrainingMethod
from ..training.curriculum import Curriculum
from ..training.guard import OverfittingGuard
from ..training.options import TrainConfig

__all__ = ["build_model", "load_sources", "make_training_method", "curriculum_of", "guard_of"]

# The records keep the name they had when this code lived in training/loop.py (it shows in --verbose output).
logger = logging.getLogger("gluon_robust.training.loop")


def _method_options(cfg: TrainConfig, teacher: Optional[Classifier]) -> Tuple[str, Dict[str, Any]]:
    """The method's name and options: common ones it takes, plus the specific ones the user gave."""
    name = TRAINING_METHODS.resolve(cfg.method)
    accepted = set(TRAINING_METHODS.parameters(name))
    common = {"eps": cfg.eps, "norm": cfg.norm, "steps": cfg.steps, "seed": cfg.seed,
              "attack_bn": cfg.attack_bn, "attack_updates_stats": cfg.attack_updates_stats}
    options = {k: v for k, v in common.items() if k in accepted}
    given = {"step_size": cfg.step_size, "mix": cfg.mix, "replays": cfg.replays, "temperature": cfg.temperature,
             "sigma": cfg.sigma,
             "teacher": teacher, "random_start": False if cfg.no_random_start else None,
             ("weight" if name == "input-grad" else "beta"): cfg.beta}
    flags = {"weight": "beta", "random_start": "no_random_start"}
    for key, value in given.items():
        if value is None:
            continue
        if key not in accepted:
            raise ConfigError(f"method {name} does not take {flags.get(key, key)}; it accepts "
                              f"{', '.join(sorted(accepted - {'seed'}))}")
        options[key] = value
    if name == "distill" and teacher is None:
        raise ConfigError("method distill needs a teacher (--teacher CONFIG)")
    return name, options


def _data_statistics(source: DataSource) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and std of (up to 2,048 samples of) a source."""
    x, _ = source.subset(slice(0, min(len(source), 2048))).arrays()
    axes = (0, 2, 3) if x.ndim == 4 else (0,)
    return tuple(float(v) for v in x.mean(axis=axes)), tuple(float(max(v, 1e-3)) for v in x.std(axis=axes))


def build_model(cfg: TrainConfig, ctx: List[mx.Context], train: DataSource) -> Tuple[Classifier, ModelConfig]:
    """The unfolded, hybridised training model on every context, and the config it will be saved with.

    The model comes from :func:`~gluon_robust.model.trainable_classifier`, like any trainable model.
    """
    size = tuple(train.sample_shape)
    if cfg.config:
        base = load_config(cfg.config)
        arch, classes, params = base.model, cfg.classes or base.classes, cfg.params or base.params
        mean, std = cfg.mean or base.mean, cfg.std or base.std
        bounds = cfg.bounds or base.bounds
        if tuple(base.input_size) != size:
            raise ConfigError(f"config {cfg.config} expects inputs {tuple(base.input_size)} but the data has {size}")
    else:
        arch, params, bounds = cfg.model, cfg.params, cfg.bounds or (0.0, 1.0)
        family = family_defaults(arch)
        names = train.classes
        classes = cfg.classes or (len(names) if names else None)
        if classes is None:
            _, labels = train.arrays() if len(train) <= 100_000 else train.subset(slice(0, 100_000)).arrays()
            classes = max(int(labels.max()) + 1, 2)
        mean, std = cfg.mean, cfg.std
        if mean is None or std is None:
            if len(family["mean"]) == size[0]:
                default_mean, default_std = family["mean"], family["std"]
            else:
                default_mean, default_std = _data_statistics(train)
                logger.info("normalisation from the training data: mean %s, std %s", default_mean, default_std)
            mean, std = mean or default_mean, std or default_std
    config = ModelConfig(model=arch, classes=int(classes), mean=tuple(mean), std=tuple(std), bounds=tuple(bounds),
                         input_size=size)
    pretrained = cfg.pretrained and not params
    options = dict(params=params, mean=config.mean, std=config.std, bounds=config.bounds, input_size=size, ctx=ctx,
                   seed=cfg.seed)
    try:
        model = trainable_classifier(arch, pretrained=pretrained, classes=config.classes, **options)
    except ModelError:
        if not pretrained:
            raise
        # the published weights have another number of classes: keep them and fine-tune a fresh output layer
        model = trainable_classifier(arch, pretrained=True, new_classes=config.classes, **options)
    return model, config


def _pretrained_class_table(cfg: TrainConfig) -> Optional[Any]:
    """The class table of a pretrained zoo net fine-tuned on its own classes (folders then map by name), or None."""
    from ..data import class_table_for

    if not (cfg.pretrained and cfg.model and not cfg.classes and not cfg.params and not cfg.config):
        return None
    return class_table_for(cfg.model, family_defaults(cfg.model)["classes"])


def load_sources(cfg: TrainConfig) -> Tuple[DataSource, Optional[DataSource]]:
    """The training data (its train split) and the validation data (a test split), or None without validation."""
    table = _pretrained_class_table(cfg)
    train = load_data(cfg.data, split="train", limit=cfg.limit, class_table=table)
    val = None
    if cfg.val_limit > 0:
        val = load_data(cfg.val_data or cfg.data, split="test", limit=cfg.val_limit, class_table=table)
        if tuple(val.sample_shape) != tuple(train.sample_shape):
            raise ConfigError(f"validation samples {val.sample_shape} differ from training samples {train.sample_shape}")
        if val.name == train.name:
            logger.warning("%s has no separate test split: validating on training samples (pass val_data)", train.name)
    return train, val


def make_training_method(cfg: TrainConfig, ctx: List[mx.Context]) -> Tuple[str, TrainingMethod]:
    """The method's registry name and the method (its hyperparameters validated before the model is built)."""
    teacher = load_classifier(load_config(cfg.teacher), ctx=ctx[0]) if cfg.teacher else None
    name, options = _method_options(cfg, teacher)
    return name, make_method(name, options)


def curriculum_of(cfg: TrainConfig) -> Optional[Curriculum]:
    """The eps and steps warm-up, None without ``--curriculum``."""
    if cfg.curriculum == "none":
        return None
    warmup = cfg.warmup_epochs if cfg.warmup_epochs is not None else max(1, cfg.epochs // 3)
    return Curriculum(eps=cfg.eps, steps=cfg.steps, warmup_epochs=warmup, kind=cfg.curriculum)


def guard_of(cfg: TrainConfig, name: str, method: TrainingMethod,
             val: Optional[DataSource]) -> Tuple[Optional[float], Optional[OverfittingGuard]]:
    """The validation PGD's eps and the overfitting guard (on by default for fast-at when it can check)."""
    # PGD validation by default only for methods that train against an attack (--val-eps asks for it anyway)
    val_eps = cfg.val_eps if cfg.val_eps is not None else ((cfg.eps or None) if method.adversarial else None)
    checkable = val is not None and bool(val_eps)
    if cfg.guard and not checkable:
        raise ConfigError("the overfitting guard needs validation data (val_limit > 0) and a PGD eps")
    if cfg.guard is None and name == "fast-at" and not checkable:
        logger.warning("fast-at without validation: no guard against catastrophic overfitting")
    use_guard = cfg.guard if cfg.guard is not None else (name == "fast-at" and checkable)
    guard = OverfittingGuard(max_drop=cfg.guard_drop, on_collapse=cfg.on_collapse) if use_guard else None
    return val_eps, guard
