#!/usr/bin/env python
"""Adversarial-example detectors on the bundled reference model: calibrated FPR, naive and adaptive TPR.

* Each detector is fitted on the 4,000 bundled training digits, calibrated to
  a 5% false-positive rate on test digits 0-499, and its false-positive rate
  measured on test digits 500-999 (target: within 2 points of 5%).
* Naive attacks (they do not know the detector) on ``--points`` test digits
  from 500 on: PGD-40 L-inf at eps 0.1 and 0.3, and DeepFool L2. TPR at the
  calibrated threshold is over the successful adversarial examples; ROC-AUC is
  those against the held-out clean digits.
* Adaptive attack (Carlini & Wagner 2017; Tramer et al. 2020):
  :class:`gluon_robust.detection.AdaptiveAttack` at each ``--adaptive-eps``,
  the per-sample worst case over the naive PGD-40 examples at that radius and
  detector-aware PGD-40 runs (selective objective, then weighted with each
  ``--c``), each keeping its best iterate. "evade" is the fraction of points
  misclassified and not flagged; for the naive attacks it is measured the
  same way. ``wins`` counts which candidate each evading point came from.

Writes ``benchmarks/results/detection.json`` and logs the table.
"""

import argparse
import logging
import time

import numpy as np

from common import setup_logging, write_results
from gluon_robust.attacks import PGD, DeepFool
from gluon_robust.data import load_data
from gluon_robust.detection import AdaptiveAttack, get_detector, roc_auc
from gluon_robust.model import load_classifier

logger = logging.getLogger("benchmarks")

DETECTORS = {
    "confidence": {},
    "entropy": {},
    "feature-squeezing": {"squeezers": "bits:1+median:2"},
    "mahalanobis": {},
    "magnet": {"epochs": 20},
    "binary": {"attack": "pgd", "attack_eps": 0.3, "attack_steps": 10, "max_samples": 1000},
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="mnist_resnet20")
    parser.add_argument("--fpr", type=float, default=0.05)
    parser.add_argument("--points", type=int, default=200, help="attacked test digits")
    parser.add_argument("--detectors", default=",".join(DETECTORS))
    parser.add_argument("--adaptive-eps", default="0.1,0.3", help="comma-separated L-inf radii of the adaptive attack")
    parser.add_argument("--c", default="1,10", help="comma-separated weights of the detector term (weighted runs)")
    parser.add_argument("--restarts", type=int, default=1, help="runs per adaptive objective")
    parser.add_argument("--out", default="benchmarks/results")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    setup_logging()
    start_all = time.perf_counter()
    weights = tuple(float(w) for w in args.c.split(",") if w.strip())
    model = load_classifier(args.config)
    train = load_data("mnist-sample", split="train")
    x_test, y_test = load_data("mnist-sample", split="test").arrays()
    x_calib, x_held = x_test[:500], x_test[500:]
    x_att, y_att = x_test[500 : 500 + args.points], y_test[500 : 500 + args.points]

    naive = {}
    for label, attack in [
        ("PGD-40 Linf 0.1", PGD(eps=0.1, steps=40)),
        ("PGD-40 Linf 0.3", PGD(eps=0.3, steps=40)),
        ("DeepFool L2", DeepFool(steps=50)),
    ]:
        t0 = time.perf_counter()
        result = attack(model, x_att, y_att)
        naive[label] = result
        logger.info("%s: success %.3f, median distance %.3f (%.1fs)", label, result.success.mean(),
                    float(np.median(result.distance[result.success])) if result.success.any() else 0.0,
                    time.perf_counter() - t0)

    rows, records = [], []
    for name in [d.strip() for d in args.detectors.split(",") if d.strip()]:
        t0 = time.perf_counter()
        det = get_detector(name, **DETECTORS.get(name, {}))
        det.fit(model, train)
        fit_s = time.perf_counter() - t0
        det.calibrate(det.score(model, x_calib), args.fpr)
        clean_scores = det.score(model, x_held)
        held_fpr = float(np.mean(det.is_flagged(clean_scores)))
        logger.info("%s: fitted in %.1fs, held-out FPR %.3f", name, fit_s, held_fpr)
        rows.append([name, "clean (held-out 500)", "-", "-", f"FPR {held_fpr:.3f}", "-", "-"])
        record = {"detector": name, "options": DETECTORS.get(name, {}), "threshold": det.threshold,
                  "held_out_fpr": held_fpr, "fit_seconds": fit_s, "attacks": []}
        for label, result in naive.items():
            scores = det.score(model, result.x_adv)
            flagged = det.is_flagged(scores)
            ok = result.success
            tpr = float(flagged[ok].mean()) if ok.any() else float("nan")
            auc = roc_auc(clean_scores, scores[ok]) if ok.any() else float("nan")
            evade = float(np.mean(ok & ~flagged))
            rows.append([name, label, "naive", f"{ok.mean():.3f}", f"{tpr:.3f}", f"{auc:.3f}", f"{evade:.3f}"])
            record["attacks"].append({"attack": label, "mode": "naive", "success": float(ok.mean()), "tpr": tpr,
                                      "roc_auc": auc, "evade": evade})
        for eps in (float(e) for e in args.adaptive_eps.split(",") if e.strip()):
            t1 = time.perf_counter()
            label = f"PGD-40 Linf {eps:g}"
            given = {f"naive {label}": naive[label].x_adv} if label in naive else {}
            adaptive = AdaptiveAttack(eps=eps, steps=40, c=weights, restarts=args.restarts, naive=not given)
            result = adaptive(model, det, x_att, y_att, candidates=given)
            ok = result.misclassified
            tpr = float(result.flagged[ok].mean()) if ok.any() else float("nan")
            auc = roc_auc(clean_scores, result.scores[ok]) if ok.any() else float("nan")
            rows.append([name, label, f"adaptive ({det.gradient})", f"{ok.mean():.3f}", f"{tpr:.3f}", f"{auc:.3f}",
                         f"{result.success_rate:.3f}"])
            record["attacks"].append({"attack": label, "mode": "adaptive", "gradient": det.gradient,
                                      "success": float(ok.mean()), "tpr": tpr, "roc_auc": auc,
                                      "evade": result.success_rate, "wins": result.wins(),
                                      "seconds": time.perf_counter() - t1})
            logger.info("%s adaptive eps %g: evade %.3f, wins %s (%.1fs)", name, eps, result.success_rate,
                        result.wins(), time.perf_counter() - t1)
        records.append(record)

    header = ["detector", "attack", "mode", "misclassified", f"TPR@{args.fpr:g}", "ROC-AUC", "evade"]
    payload = {
        "config": args.config, "fpr": args.fpr, "points": args.points, "calibration": "test digits 0-499",
        "held_out": "test digits 500-999", "fit": "4000 training digits",
        "adaptive": repr(AdaptiveAttack(c=weights, restarts=args.restarts)), "detectors": records,
        "seconds": time.perf_counter() - start_all,
    }
    write_results(args.out, "detection", payload, rows, header)


if __name__ == "__main__":
    main()
