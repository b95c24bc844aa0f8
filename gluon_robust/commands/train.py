"""``gluon-robust train``: adversarially fine-tune a model-zoo network on a data source.

The flags become a :class:`~gluon_robust.training.options.TrainConfig`;
:func:`run_training` builds the data, the method and the model from it (see
:mod:`._train_setup`), runs :func:`~gluon_robust.training.loop.train_adversarial`
and writes the outputs: ``NAME.params``, ``NAME.yaml`` (a model config that
:func:`~gluon_robust.model.load_classifier` reads) and ``metrics.json``.
``scripts/train_adversarial.py`` uses the same flags.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from ..cli import add_model_args, command, emit, parse_ctx, parse_fraction

__all__ = ["configure_train", "config_from_args", "run_train", "run_training"]

# The records keep the name they had when run_training lived in training/loop.py (it shows in --verbose output).
logger = logging.getLogger("gluon_robust.training.loop")


#: How ``train`` words the model flags' help (a model to fine-tune, not one to evaluate).
_MODEL_HELP = {
    "model": "gluoncv.model_zoo name to fine-tune (fresh, --pretrained or --params)",
    "config": "model config YAML or bundled config name (e.g. mnist_resnet20) to fine-tune",
    "params": ".params file with the starting weights",
    "pretrained": "start from GluonCV's pretrained weights (offline cache)",
    "classes": "number of classes (default: from the config or the data)",
    "mean": "normalisation mean (default: config, zoo family or data)",
    "std": "normalisation std",
}


def _contexts(text: str) -> Tuple[str, ...]:
    """``cpu``, ``gpu:0,gpu:1`` -> ``("cpu:0",)``, ``("gpu:0", "gpu:1")`` (validated)."""
    return tuple(f"{c.device_type}:{c.device_id}" for c in parse_ctx(text))


def _epochs(text: str) -> Tuple[int, ...]:
    """``"10,20"`` -> ``(10, 20)``; empty -> ``()``."""
    try:
        return tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs such as 10,20, got {text!r}") from None


def _add_method_flags(parser: argparse.ArgumentParser) -> None:
    """The ``method`` group of ``train``: the method, its attack and its BatchNorm handling."""
    from ..training import method_names

    method = parser.add_argument_group("method")
    method.add_argument("--method", default="pgd-at", help=f"one of {', '.join(method_names())} (default pgd-at)")
    method.add_argument("--eps", type=parse_fraction, default=0.3, help="attack radius in pixel units, e.g. 8/255 (default 0.3)")
    method.add_argument("--norm", default="linf", help="linf or l2")
    method.add_argument("--steps", type=int, default=10, help="attack steps of pgd-at, trades, mart (default 10)")
    method.add_argument("--step-size", type=parse_fraction, help="absolute attack step (default: the method's)")
    method.add_argument("--no-random-start", action="store_true", help="pgd-at, fast-at: start from the clean input")
    method.add_argument("--beta", type=parse_fraction, help="trades, mart: KL weight (default 6); input-grad: penalty weight")
    method.add_argument("--mix", type=parse_fraction, help="pgd-at: weight of the clean loss in [0, 1] (default 0)")
    method.add_argument("--replays", type=int, help="free-at: replays of each batch (default 4)")
    method.add_argument("--sigma", type=parse_fraction,
                        help="gaussian: noise standard deviation in pixel units (default 0.25)")
    method.add_argument("--temperature", type=parse_fraction, help="distill, standard: softmax temperature")
    method.add_argument("--teacher", help="distill: the teacher's model config YAML")
    method.add_argument("--attack-bn", default="train", choices=("train", "eval"),
                        help="BatchNorm statistics the training-time attack uses (default train: batch statistics)")
    method.add_argument("--attack-updates-stats", action="store_true",
                        help="let the attack's passes update BatchNorm running statistics (default: restored)")
    method.add_argument("--bn-stats", default="train", choices=("train", "clean"),
                        help="running statistics: as training left them, or re-estimated on clean data each epoch")
    method.add_argument("--curriculum", default="none", choices=("none", "linear", "step"),
                        help="warm eps and steps up over the first epochs")
    method.add_argument("--warmup-epochs", type=float, help="curriculum length (default a third of --epochs)")


def configure_train(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of ``train`` (GluonCV-style names)."""
    add_model_args(parser, help_texts=_MODEL_HELP, inference=False)

    data = parser.add_argument_group("data")
    data.add_argument("--data", default="mnist-sample", help="training data; its train split is used (default mnist-sample)")
    data.add_argument("--limit", type=int, help="use only the first N training samples")
    data.add_argument("--val-data", help="validation data; its test split is used (default: --data)")
    data.add_argument("--val-limit", type=int, default=500, help="validation samples (0: no validation; default 500)")

    _add_method_flags(parser)

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=10)
    optim.add_argument("--batch-size", type=int, default=128, help="samples per step over all devices")
    optim.add_argument("--optimizer", default="adam", help="any mxnet optimizer name (default adam)")
    optim.add_argument("--lr", type=float, default=1e-3)
    optim.add_argument("--wd", type=float, default=1e-4)
    optim.add_argument("--momentum", type=float, default=0.9, help="sgd and nag only")
    optim.add_argument("--lr-decay", type=float, default=0.1)
    optim.add_argument("--lr-decay-epoch", type=_epochs, default=(), help="comma-separated epochs, e.g. 6,8")

    val = parser.add_argument_group("validation and overfitting guard")
    val.add_argument("--val-eps", type=parse_fraction, help="eps of the per-epoch PGD check (default --eps)")
    val.add_argument("--val-steps", type=int, default=10, help="steps of the per-epoch PGD check (default 10)")
    guard = val.add_mutually_exclusive_group()
    guard.add_argument("--guard", dest="guard", action="store_true", default=None,
                       help="stop on catastrophic overfitting (default on for fast-at)")
    guard.add_argument("--no-guard", dest="guard", action="store_false")
    val.add_argument("--guard-drop", type=float, default=0.2, help="PGD accuracy drop that counts as a collapse")
    val.add_argument("--on-collapse", default="rollback", choices=("rollback", "stop", "warn"))

    run = parser.add_argument_group("run")
    run.add_argument("--ctx", type=_contexts, default=("cpu:0",), help="cpu, gpu:0, or a list such as gpu:0,gpu:1")
    run.add_argument("--kvstore", default="device",
                     help="device (default) or local: one process; dist_sync or dist_async: one worker of a "
                          "parameter-server job started by `gluon-robust launch` (--batch-size is then the "
                          "global batch over all workers; see docs/distributed.md)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--save-dir", default="runs/train", help="outputs and checkpoints (default runs/train)")
    run.add_argument("--name", help="base name of the saved params and config (default MODEL_METHOD)")
    run.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps (default: epochs only)")
    run.add_argument("--resume", action="store_true", help="continue from the checkpoint in --save-dir")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace):
    """The :class:`~gluon_robust.training.options.TrainConfig` the flags describe."""
    from ..training.options import TrainConfig

    return TrainConfig(
        model=args.model, config=args.config, params=args.params, pretrained=args.pretrained, classes=args.classes,
        mean=args.mean, std=args.std, bounds=args.bounds, data=args.data, limit=args.limit, val_data=args.val_data,
        val_limit=args.val_limit, method=args.method, eps=args.eps, norm=args.norm, steps=args.steps,
        step_size=args.step_size, no_random_start=args.no_random_start, beta=args.beta, mix=args.mix,
        replays=args.replays, temperature=args.temperature, sigma=args.sigma, teacher=args.teacher, attack_bn=args.attack_bn,
        attack_updates_stats=args.attack_updates_stats, bn_stats=args.bn_stats, curriculum=args.curriculum,
        warmup_epochs=args.warmup_epochs, epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
        lr=args.lr, wd=args.wd, momentum=args.momentum, lr_decay=args.lr_decay, lr_decay_epoch=args.lr_decay_epoch,
        val_eps=args.val_eps, val_steps=args.val_steps, guard=args.guard, guard_drop=args.guard_drop,
        on_collapse=args.on_collapse, ctx=args.ctx, kvstore=args.kvstore, seed=args.seed, save_dir=args.save_dir, name=args.name,
        checkpoint_every=args.checkpoint_every, resume=args.resume, progress=not args.no_progress,
    )


@command("train", "Adversarially fine-tune a model-zoo network on a data source.")(configure_train)
def run_train(args: argparse.Namespace) -> int:
    from ..training.loop import progress_logger

    config = config_from_args(args)
    # Per-epoch lines (loss, clean and PGD accuracy) reach the terminal even without --verbose.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    progress_logger.addHandler(handler)
    progress_logger.propagate = False
    try:
        metrics = run_training(config)
    finally:
        progress_logger.removeHandler(handler)
        progress_logger.propagate = True
    summary = {"final": metrics["final"], "train_seconds": metrics["train_seconds"],
               "stopped_early": metrics["stopped_early"], "outputs": metrics["outputs"],
               "kvstore": metrics["kvstore"], "num_workers": metrics["num_workers"]}
    emit(json.dumps(summary, indent=2))
    return 0


def run_training(cfg: Any, *, on_step: Optional[Callable[[int, int, int], None]] = None) -> Dict[str, Any]:
    """Fine-tune a zoo network as ``cfg`` (a TrainConfig) says and write ``NAME.params``, ``NAME.yaml`` and
    ``metrics.json``.

    Returns the metrics dict written to ``metrics.json``.
    """
    from ..training.loop import train_adversarial
    from ..training.options import parse_contexts
    from ._train_setup import build_model, curriculum_of, guard_of, load_sources, make_training_method

    ctx = parse_contexts(cfg.ctx)
    train, val = load_sources(cfg)
    name, method = make_training_method(cfg, ctx)  # validates the hyperparameters before the model is built
    model, config = build_model(cfg, ctx, train)
    curriculum = curriculum_of(cfg)
    val_eps, guard = guard_of(cfg, name, method, val)
    logger.info("training %s with %r on %s (%d samples), validation %s, ctx %s",
                config.model, method, train.name, len(train), val.name if val else "none", ctx)
    metrics_of = _metrics_recorder(cfg, method, config.to_dict())
    save_dir = Path(cfg.save_dir)

    def write_metrics(run: Any) -> None:
        if run.rank == 0:
            _write_json(save_dir / "metrics.json", metrics_of(run, final=False))

    run = train_adversarial(model, method, train, cfg.training(val_eps=val_eps), val=val, ctx=ctx,
                            curriculum=curriculum, guard=guard, on_step=on_step, on_epoch=write_metrics)
    return _save_outputs(cfg, model, config, run, metrics_of(run, final=True))


def _write_json(path: Path, data: Dict[str, Any]) -> None:
    from ..io import atomic_write_json

    atomic_write_json(path, data)


def _metrics_recorder(cfg: Any, method: Any, model: Dict[str, Any]) -> Callable[..., Dict[str, Any]]:
    """``metrics_of(run, final)``: the contents of ``metrics.json`` for a run so far, or finished."""
    from ..reporting import versions

    started = time.strftime("%Y-%m-%dT%H:%M:%S")

    def metrics_of(run: Any, final: bool) -> Dict[str, Any]:
        return {
            "config": cfg.fingerprint(), "method": repr(method), "model": model,
            "epochs": run.epochs, "train_seconds": round(run.seconds, 3),
            "validation_seconds": round(run.validation_seconds, 3), "stopped_early": run.stopped_early,
            "finished": final, "started": started, "versions": versions(),
            "final": run.epochs[-1] if run.epochs else None,
            "kvstore": run.kvstore, "num_workers": run.num_workers,
            "metrics_over": "all workers" if run.kvstore == "dist_sync" or run.num_workers == 1 else "rank 0",
        }

    return metrics_of


def _save_outputs(cfg: Any, model: Any, config: Any, run: Any, metrics: Dict[str, Any]) -> Dict[str, Any]:
    """Write the weights, their config and ``metrics.json`` (rank 0 only); the metrics with their outputs."""
    from ..reporting import record_outputs
    from ..training.standard import save_trained

    save_dir = Path(cfg.save_dir)
    config_path = save_dir / f"{cfg.run_name}.yaml"
    metrics["outputs"] = {"config": str(config_path), "params": str(config_path.with_suffix(".params"))}
    if run.rank == 0:  # the only writer of a distributed job; every epoch's end refused non-finite parameters
        config_path = save_trained(model, config, save_dir, cfg.run_name)
        _write_json(save_dir / "metrics.json", metrics)
        # The run's outputs replace an earlier run's in --save-dir (another --name's weights, say).
        record_outputs(save_dir, [config_path.name, config_path.with_suffix(".params").name, "metrics.json"]
                       + (["checkpoint"] if (save_dir / "checkpoint").exists() else []))
        logger.info("saved %s and %s", config_path, save_dir / "metrics.json")
    return metrics
