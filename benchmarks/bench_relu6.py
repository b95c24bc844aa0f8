#!/usr/bin/env python
"""The fold-time ReLU6 rewrite: folded MobileNetV2 with ``clip`` against ``minimum(relu(x), 6)``.

Folds GluonCV ``mobilenetv2_1.0`` (fixed random weights) twice, once with
:func:`gluon_robust.folding.fold_symbol`'s ``rewrite_relu6=False`` (GluonCV's
``clip(x, 0, 6)`` kept) and once with the default rewrite, and times one
forward plus input-backward pass (the inner step of every gradient attack) and
one forward (a black-box query) of each, interleaved in one process. Also
checks that both give the same logits and the same input gradient bit for bit
on the benchmark batch (random inputs put no pre-activation exactly at 0).

Writes ``relu6.json`` with the median times and the ratio rewritten ÷ clip.
"""

import argparse
import logging
import os
import statistics
import time

import mxnet as mx
import numpy as np
from gluoncv.model_zoo import get_model
from mxnet import autograd

from common import setup_logging, write_results
from gluon_robust.folding import block_to_symbol, fold_symbol, symbol_block


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenetv2_1.0")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (medians)")
    parser.add_argument("--out", default="benchmarks/results")
    return parser.parse_args(argv)


def folded(name, shape, rewrite):
    net = get_model(name, pretrained=False)
    mx.random.seed(0)  # the same weights for both variants
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros(shape))
    sym, params = block_to_symbol(net)
    sym, params, report = fold_symbol(sym, params, input_shape=shape, rewrite_relu6=rewrite)
    return symbol_block(sym, params, mx.cpu()), report


def step(block, x, train_mode=False):
    """Logits and input gradient of the summed top logit; seconds for forward+backward.

    ``train_mode=True`` records as the attacks record a folded graph (``gluon_robust.attacks.base``): needed for
    a net with max pooling, whose MKLDNN backward is wrong after an inference-mode forward. MobileNetV2 (this
    benchmark's net) has none, so both modes compute the same gradient there.
    """
    xv = x.copy()
    xv.attach_grad()
    start = time.perf_counter()
    with autograd.record(train_mode=train_mode):
        out = block(xv)
        loss = out.max(axis=1).sum()
    loss.backward()
    grad = xv.grad.asnumpy()
    return out.asnumpy(), grad, time.perf_counter() - start


def forward(block, x):
    start = time.perf_counter()
    with autograd.pause(train_mode=False):
        block(x).asnumpy()
    return time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    setup_logging()
    shape = (args.batch_size, 3, args.size, args.size)
    x = mx.nd.array(np.random.RandomState(0).rand(*shape), dtype="float32")
    blocks = {}
    for label, rewrite in (("clip", False), ("relu-minimum", True)):
        blocks[label], report = folded(args.model, shape, rewrite)
        logging.info("%s: %d ReLU6 rewritten", label, report.relu6_rewritten)
    results = {label: {"step": [], "forward": []} for label in blocks}
    outputs = {}
    for label, block in blocks.items():  # warm-up, and the outputs compared
        step(block, x)
        outputs[label] = step(block, x)[:2]
    for _ in range(args.repeats):
        for label, block in blocks.items():
            results[label]["step"].append(step(block, x)[2])
            results[label]["forward"].append(forward(block, x))
    same_logits = bool(np.array_equal(outputs["clip"][0], outputs["relu-minimum"][0]))
    same_grad = bool(np.array_equal(outputs["clip"][1], outputs["relu-minimum"][1]))
    medians = {label: {k: 1000 * statistics.median(v) / args.batch_size for k, v in r.items()}
               for label, r in results.items()}
    ratio = {k: medians["relu-minimum"][k] / medians["clip"][k] for k in ("step", "forward")}
    rows = [[label, f"{m['step']:.1f}", f"{m['forward']:.1f}"] for label, m in medians.items()]
    rows.append(["ratio", f"{ratio['step']:.2f}", f"{ratio['forward']:.2f}"])
    write_results(
        args.out, "relu6",
        {"model": args.model, "input": list(shape[1:]), "batch_size": args.batch_size, "repeats": args.repeats,
         "threads": os.environ.get("OMP_NUM_THREADS"), "ms_per_image": medians, "ratio_rewritten_over_clip": ratio,
         "same_logits": same_logits, "same_input_gradient": same_grad,
         "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        rows, ["ReLU6 as", "fwd+input-bwd ms/img", "forward ms/img"],
    )


if __name__ == "__main__":
    main()
