"""``gluon-robust detect``: screen inputs with an adversarial-example detector calibrated to a false-positive rate.

With ``--clean`` and ``--adversarial`` (for instance the ``adversarial.npz`` of
``gluon-robust attack``) it also measures the detector: the true-positive rate
on the successful adversarial examples at the threshold calibrated to
``--fpr``, the false-positive rate that threshold has on the clean inputs, and
the ROC-AUC as the Mann-Whitney rank statistic (Hanley & McNeil 1982; see
:func:`~gluon_robust.detection.base.evaluate_scores`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

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
    data.add_argument("--data", help="npz:FILE, folder:DIR, or any data spec of gluon-robust (the adversarial.npz "
                                     "of gluon-robust attack too); needed unless --clean and --adversarial are given")
    data.add_argument("--split", default="test", choices=("train", "test"), help="split of --data and --clean")
    data.add_argument("--limit", type=int, help="screen only the first N inputs")
    rates = parser.add_argument_group("detection rates (give both)")
    rates.add_argument("--clean", metavar="PATH_OR_DATASET",
                       help="clean inputs (negatives), a data spec such as mnist-sample or npz:FILE: report the FPR "
                            "the calibrated threshold has on them")
    rates.add_argument("--adversarial", metavar="PATH",
                       help="adversarial inputs (positives): the adversarial.npz of gluon-robust attack (its "
                            "successful x_adv) or an .npz with x: report the TPR at the threshold and ROC-AUC")
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


def check_data_flag(flag: str, spec: Any) -> None:
    """Refuse a data spec that names no dataset or no existing file or folder, naming ``flag`` (no data is read)."""
    from ..data import BUILTIN_DATASETS

    text = spec.strip() if isinstance(spec, str) else ""
    forms = "mnist-sample, " + ", ".join(BUILTIN_DATASETS) + ", npz:FILE or folder:DIR"
    if text in ("mnist-sample",) + tuple(BUILTIN_DATASETS):
        return
    kind, colon, path = text.partition(":")
    if colon and kind in ("npz", "folder"):
        if not path:
            raise ConfigError(f"{flag} {spec!r} names no path after '{kind}:'")
        folder = kind == "folder"
    elif text.lower().endswith(".npz"):
        path, folder = text, False
    elif text and os.path.isdir(os.path.expanduser(text)):
        return
    else:
        raise ConfigError(f"{flag} {spec!r} is not a data spec; use one of: {forms}")
    full = os.path.expanduser(path)
    if folder and not os.path.isdir(full):
        raise ConfigError(f"{flag} {spec}: no such folder")
    if not folder and not os.path.isfile(full):
        raise ConfigError(f"{flag} {spec}: " + ("is not a file" if os.path.exists(full) else "file not found"))


class AdversarialInputs:
    """The positives of ``--adversarial``: its successful adversarial examples, with their source indices.

    Reads the ``adversarial.npz`` of ``gluon-robust attack`` (``x_adv`` for every
    sample, the clean input where none was attacked, and ``success``): only the
    rows with ``success`` count, since an unattacked or unbroken row is no
    adversarial example. An ``.npz`` with ``x`` (and no ``success``) counts whole.

    Raises
    ------
    ConfigError
        Naming ``--adversarial`` and the path: a missing file, no ``.npz``, a
        pickle, no ``x_adv`` or ``x``, a ``success`` or ``index`` of another
        length, or no successful example at all.
    """

    def __init__(self, text: str) -> None:
        from ..data import ArraySource
        from ..integrity import load_npz

        flag = "--adversarial"
        path = Path(os.path.expanduser(text[4:] if text.startswith("npz:") else text))
        if not path.exists():
            raise ConfigError(f"{flag} {text}: file not found")
        if not path.is_file():
            raise ConfigError(f"{flag} {text}: is not a file")
        arrays = load_npz(path, flag, ConfigError, fix="give the adversarial.npz of gluon-robust attack, or an .npz "
                                                       "with the images as x")
        key = "x_adv" if "x_adv" in arrays else "x" if "x" in arrays else None
        if key is None:
            raise ConfigError(f"{flag} {text}: has no array x_adv or x (it has {sorted(arrays)})")
        x = arrays[key]
        total = len(x) if x.ndim else 0
        keep = np.ones(total, bool)
        if "success" in arrays:
            if arrays["success"].shape != (total,):
                raise ConfigError(f"{flag} {text}: success has shape {arrays['success'].shape}, not ({total},)")
            keep = arrays["success"].astype(bool)
        index = arrays.get("index", np.arange(total))
        if np.shape(index) != (total,):
            raise ConfigError(f"{flag} {text}: index has shape {np.shape(index)}, not ({total},)")
        if not keep.any():
            raise ConfigError(f"{flag} {text}: none of its {total} inputs is a successful adversarial example; "
                              "nothing to detect")
        self.path = str(path)
        self.total = int(total)
        self.index = np.asarray(index, np.int64)[keep]
        self.source = ArraySource(x[keep], np.zeros(int(keep.sum()), np.int64), name=f"{flag} {text}")


def _check_inputs(args: argparse.Namespace) -> Optional[AdversarialInputs]:
    """Check ``--data``, ``--clean`` and ``--adversarial`` before any work; returns the adversarial inputs."""
    if (args.clean is None) != (args.adversarial is None):
        given, missing = ("--clean", "--adversarial") if args.adversarial is None else ("--adversarial", "--clean")
        value = args.clean if args.adversarial is None else args.adversarial
        raise ConfigError(f"{given} {value} needs {missing} too: the detection rates compare clean with "
                          "adversarial inputs")
    if args.data is None and args.clean is None:
        raise ConfigError("detect needs --data (inputs to screen), or --clean and --adversarial (to measure TPR, "
                          "FPR and ROC-AUC), or both")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be a positive integer, got {args.limit}")
    if args.clean is None:
        return None
    check_data_flag("--clean", args.clean)
    return AdversarialInputs(args.adversarial)


def _score_rows(detector: Any, model: Any, source: Any, batch_size: int, label: str,
                index: Optional[np.ndarray] = None) -> Iterator[Dict[str, Any]]:
    """One row per input of ``source``: its index (``index[position]`` when given), score, flag, prediction, set."""
    for batch in source.batches(batch_size):
        scores = detector.score(model, batch.x, batch_size=batch_size)
        predictions = model.predict(batch.x, batch_size=batch_size).argmax(axis=1)
        positions = batch.index if index is None else index[batch.index]
        for position, score, pred in zip(positions, scores, predictions):
            yield {"index": int(position), "score": float(score), "flag": bool(score > detector.threshold),
                   "prediction": int(pred), "set": label}


def detection_rates(detector: Any, clean_rows: List[Dict[str, Any]], adversarial_rows: List[Dict[str, Any]],
                    ) -> Dict[str, Any]:
    """TPR on the adversarial rows at the calibrated threshold, FPR on the clean rows, and ROC-AUC (rank statistic)."""
    from ..detection import evaluate_scores

    rates = evaluate_scores([r["score"] for r in clean_rows], [r["score"] for r in adversarial_rows],
                            detector.threshold)
    rates["target_fpr"] = detector.fpr
    rates["roc_auc_method"] = "Mann-Whitney rank statistic (ties count one half)"
    return rates


def _write_csv(path: Path, rows: list) -> None:
    from ..io import atomic_write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["index", "score", "flag", "prediction", "set"])
    for row in rows:
        writer.writerow([row["index"], repr(row["score"]), int(row["flag"]), row["prediction"], row["set"]])
    atomic_write_text(path, buffer.getvalue())


def _detector_from_args(args: argparse.Namespace) -> Tuple[Any, Optional[Path], bool]:
    """The detector of ``--detector``: loaded from ``--detector-params`` when that file exists (it must hold a
    detector of that kind), else built from its options; with the params file and whether it was loaded."""
    from ..detection import DETECTORS, load_detector, parse_spec

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
    return detector, params_file, loaded


def _calibration_warnings(calibration: Dict[str, Any], model: Any) -> List[str]:
    """Clean, labelled calibration data: the model must be far above chance on it (the warnings, emitted)."""
    if "calibration_correct" not in calibration:
        return []
    from ..evaluation import sanity

    warnings = sanity.accuracy_warnings(calibration["calibration_samples"], calibration["calibration_correct"],
                                        model.num_classes, "clean accuracy on the calibration data")
    sanity.emit(warnings)
    return warnings


@command("detect", "Screen inputs with an adversarial-example detector calibrated to a false-positive rate.")(
    _configure_detect)
def run_detect(args: argparse.Namespace) -> int:
    from ..io import atomic_write_json
    from ..reporting import staged_output

    start = time.perf_counter()
    fpr = float(args.fpr)
    if not 0.0 < fpr < 1.0:
        raise ConfigError(f"--fpr must be strictly between 0 and 1, got {args.fpr}")
    adversarial = _check_inputs(args)
    detector, params_file, loaded = _detector_from_args(args)
    model = model_from_args(args)
    source = _open(args.data, args.split, args.limit, model, "data") if args.data is not None else None
    clean = None
    if adversarial is not None:
        clean = _open(args.clean, args.split, None, model, "--clean data")
        if model.input_size and tuple(adversarial.source.sample_shape) != tuple(model.input_size):
            raise DataError(f"--adversarial {args.adversarial} has samples of shape "
                            f"{adversarial.source.sample_shape} but the model expects {tuple(model.input_size)}")

    calibration: Dict[str, Any] = {"loaded_from": str(params_file)} if loaded else {}
    if not loaded or detector.threshold is None or not np.isclose(detector.fpr or -1.0, fpr):
        calibration.update(_fit_and_calibrate(args, detector, model))
    if params_file is not None and not loaded:
        detector.save(params_file)
        logger.info("detector params written to %s", params_file)

    warnings = _calibration_warnings(calibration, model)
    rows = list(_score_rows(detector, model, source, args.batch_size, "data")) if source is not None else []
    summary: Dict[str, Any] = {
        "detector": detector.name, "config": detector.config(), "threshold": detector.threshold,
        "target_fpr": detector.fpr,
    }
    if source is not None:
        summary.update(data=source.name, n=len(rows), flagged=int(sum(r["flag"] for r in rows)))
    if adversarial is not None:
        clean_rows = list(_score_rows(detector, model, clean, args.batch_size, "clean"))
        adversarial_rows = list(_score_rows(detector, model, adversarial.source, args.batch_size, "adversarial",
                                            adversarial.index))
        summary["evaluation"] = dict(
            detection_rates(detector, clean_rows, adversarial_rows), clean_data=clean.name,
            adversarial_file=adversarial.path, adversarial_rows=adversarial.total,
            adversarial_not_successful=adversarial.total - len(adversarial_rows))
        if clean.name in (calibration.get("fit_data"), calibration.get("calibration_data")):
            message = (f"--clean {args.clean} is the data the detector was fitted or calibrated on: the measured "
                       "FPR is optimistic; give held-out clean data")
            warnings.append(message)
            logger.warning(message)
        rows += clean_rows + adversarial_rows
    summary.update(calibration=calibration, seconds=round(time.perf_counter() - start, 3), warnings=warnings)
    out = Path(args.out)
    with staged_output(out) as stage:  # replaces an earlier run's outputs in --out
        _write_csv(stage / "detections.csv", rows)
        atomic_write_json(stage / "detections.json", dict(summary, inputs=rows))
    shown = ("detector", "threshold", "target_fpr", "n", "flagged", "evaluation", "warnings")
    emit(json.dumps({k: summary[k] for k in shown if k in summary}, indent=2))
    emit_warnings(warnings, stderr=True)  # stdout stays one JSON document
    return 0
