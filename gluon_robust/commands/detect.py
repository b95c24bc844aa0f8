"""``gluon-robust detect``: screen inputs with an adversarial-example detector calibrated to a false-positive rate."""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np

from ..cli import add_model_args, command, emit, emit_warnings, model_from_args, parse_fraction, parse_ctx
from ..errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def _configure_detect(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser)
    group = parser.add_argument_group("detector")
    group.add_argument("--detector", required=True, metavar="NAME[:key=value,...]",
                       help="confidence, entropy, feature-squeezing, mahalanobis, magnet or binary, with options, "
                            "e.g. magnet:epochs=10 or feature-squeezing:squeezers=bits:1+median:2")
    group.add_argument("--fpr", type=parse_fraction, default=0.05, help="target false-positive rate (default 0.05)")
    group.add_argument("--fit-data", default="mnist-sample", help="clean data to fit and calibrate on")
    group.add_argument("--fit-split", default="train", choices=("train", "test"))
    group.add_argument("--fit-limit", type=int, help="use only the first N clean samples")
    group.add_argument("--calib-data", help="held-out clean data to calibrate on (default: a part of --fit-data)")
    group.add_argument("--calib-split", default="test", choices=("train", "test"))
    group.add_argument("--calib-fraction", type=parse_fraction, default=0.25,
                       help="without --calib-data, the fraction of --fit-data held out to calibrate (default 0.25)")
    group.add_argument("--detector-params", metavar="FILE",
                       help="fitted detector state: loaded when FILE exists (no fitting), else written after fitting")
    data = parser.add_argument_group("inputs to screen")
    data.add_argument("--data", required=True, help="npz:FILE, folder:DIR, or any data spec of gluon-robust")
    data.add_argument("--split", default="test", choices=("train", "test"))
    data.add_argument("--limit", type=int, help="screen only the first N inputs")
    run = parser.add_argument_group("run")
    run.add_argument("--ctx", type=parse_ctx, default="cpu", help="cpu or gpu:0")
    run.add_argument("--batch-size", type=int, default=128)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", required=True, help="output directory (detections.csv, detections.json)")


def _open(spec: str, split: str, limit: Any, model: Any, what: str):
    from ..data import load_data

    size = tuple(model.input_size[1:]) if model.input_size else None
    source = load_data(spec, split=split, limit=limit, input_size=size, class_table=getattr(model, "class_table", None),
                       num_classes=getattr(model, "num_classes", None))
    if model.input_size and tuple(source.sample_shape) != tuple(model.input_size):
        raise DataError(f"{what} {source.name} has samples of shape {source.sample_shape} "
                        f"but the model expects {tuple(model.input_size)}")
    return source


def _fit_and_calibrate(args: argparse.Namespace, detector: Any, model: Any) -> Dict[str, Any]:
    """Fit on clean data and calibrate on held-out clean data; returns what was done."""
    fit_source = _open(args.fit_data, args.fit_split, args.fit_limit, model, "fit data")
    if args.calib_data:
        calib_source = _open(args.calib_data, args.calib_split, None, model, "calibration data")
        fit_part = fit_source
    else:
        if not 0.0 < args.calib_fraction < 1.0:
            raise ConfigError(f"--calib-fraction must be strictly between 0 and 1, got {args.calib_fraction}")
        order = np.random.default_rng(args.seed).permutation(len(fit_source))
        held = max(1, int(round(args.calib_fraction * len(fit_source))))
        if held >= len(fit_source):
            raise DataError(f"fit data {fit_source.name} has {len(fit_source)} samples: too few to hold some out")
        calib_source = fit_source.subset(np.sort(order[:held]))
        fit_part = fit_source.subset(np.sort(order[held:]))
    if detector.trainable and not detector.fitted:
        detector.fit(model, fit_part)
    x_calib, y_calib = calib_source.arrays()
    scores = detector.score(model, x_calib, batch_size=args.batch_size)
    detector.calibrate(scores, args.fpr)
    correct = int((model.predict(x_calib, batch_size=args.batch_size).argmax(axis=1) == y_calib).sum())
    return {
        "fit_data": fit_source.name, "fit_samples": len(fit_part) if detector.trainable else 0,
        "calibration_data": calib_source.name, "calibration_samples": len(calib_source),
        "calibration_fpr": float(np.mean(scores > detector.threshold)),
        "calibration_correct": correct,  # the model on the clean calibration data: a check of labels and weights
    }


def _detector_with_seed(spec: str, seed: int) -> Any:
    """The detector of ``spec``; one that draws random numbers gets ``--seed`` unless its spec sets ``seed=``."""
    from ..detection import DETECTORS, make_detector, parse_spec

    name, options = parse_spec(spec)
    if "seed" in DETECTORS.parameters(name):
        given = options.setdefault("seed", seed)
        if given != seed and seed != 0:
            raise ConfigError(f"--seed {seed} and the detector option seed={given} differ; give the seed once")
    return make_detector(name, options)


def _write_csv(path: Path, rows: list) -> None:
    from ..io import atomic_write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["index", "score", "flag", "prediction"])
    for row in rows:
        writer.writerow([row["index"], repr(row["score"]), int(row["flag"]), row["prediction"]])
    atomic_write_text(path, buffer.getvalue())


@command("detect", "Screen inputs with an adversarial-example detector calibrated to a false-positive rate.")(
    _configure_detect)
def run_detect(args: argparse.Namespace) -> int:
    from ..detection import DETECTORS, load_detector, parse_spec
    from ..io import atomic_write_json
    from ..reporting import staged_output

    start = time.perf_counter()
    fpr = float(args.fpr)
    if not 0.0 < fpr < 1.0:
        raise ConfigError(f"--fpr must be strictly between 0 and 1, got {args.fpr}")
    name, _ = parse_spec(args.detector)
    canonical = DETECTORS.resolve(name)
    params_file = Path(args.detector_params) if args.detector_params else None
    loaded = params_file is not None and params_file.exists()
    if loaded:
        detector = load_detector(params_file)
        if detector.name != canonical:
            raise ConfigError(f"--detector-params {params_file} holds a {detector.name} detector, not {canonical}")
    else:
        detector = _detector_with_seed(args.detector, args.seed)  # validate options before loading anything
    model = model_from_args(args)
    source = _open(args.data, args.split, args.limit, model, "data")

    calibration: Dict[str, Any] = {"loaded_from": str(params_file)} if loaded else {}
    if not loaded or detector.threshold is None or not np.isclose(detector.fpr or -1.0, fpr):
        calibration.update(_fit_and_calibrate(args, detector, model))
    if params_file is not None and not loaded:
        detector.save(params_file)
        logger.info("detector params written to %s", params_file)

    warnings = []
    if "calibration_correct" in calibration:  # clean, labelled data: the model must be far above chance on it
        from ..evaluation import sanity

        warnings = sanity.accuracy_warnings(calibration["calibration_samples"], calibration["calibration_correct"],
                                            model.num_classes, "clean accuracy on the calibration data")
        sanity.emit(warnings)
    rows = []
    for batch in source.batches(args.batch_size):
        scores = detector.score(model, batch.x, batch_size=args.batch_size)
        predictions = model.predict(batch.x, batch_size=args.batch_size).argmax(axis=1)
        for index, score, pred in zip(batch.index, scores, predictions):
            rows.append({"index": int(index), "score": float(score), "flag": bool(score > detector.threshold),
                         "prediction": int(pred)})
    out = Path(args.out)
    summary = {
        "detector": detector.name, "config": detector.config(), "threshold": detector.threshold,
        "target_fpr": detector.fpr, "data": source.name, "n": len(rows),
        "flagged": int(sum(r["flag"] for r in rows)), "calibration": calibration,
        "seconds": round(time.perf_counter() - start, 3), "warnings": warnings,
    }
    with staged_output(out) as stage:  # replaces an earlier run's outputs in --out
        _write_csv(stage / "detections.csv", rows)
        atomic_write_json(stage / "detections.json", dict(summary, inputs=rows))
    emit(json.dumps({k: summary[k] for k in ("detector", "threshold", "target_fpr", "n", "flagged", "warnings")},
                    indent=2))
    emit_warnings(warnings, stderr=True)  # stdout stays one JSON document
    return 0
