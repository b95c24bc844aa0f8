#!/usr/bin/env python
"""Input-gradient speed of an eval-mode model with and without BatchNorm folding.

Times one forward plus input-backward pass (the inner step of every gradient
attack) of GluonCV ``cifar_resnet20_v1`` at batch 128 on 3x32x32 inputs:

* ``bn-eval``: BatchNorm as is, eval mode (also gives wrong gradients in MXNet 1.9.1);
* ``bn-eval-hybrid``: the same, hybridised;
* ``bn-global-stats``: BatchNorm with ``use_global_stats=True`` (correct, slow);
* ``folded``: BatchNorm folded (gluon_robust), not hybridised;
* ``folded-hybrid``: folded and hybridised, parameters frozen (the default).

Writes ``folding.json`` and prints a table with the speed-up over ``bn-eval``.
"""

import argparse
import logging

import mxnet as mx
from mxnet import autograd, gluon
from gluoncv.model_zoo import get_model

from common import setup_logging, time_call, write_results
from gluon_robust.folding import fold_batchnorm


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_resnet20_v1")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ctx", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--out", default="benchmarks/results")
    return parser.parse_args(argv)


def make_net(name, ctx, **kwargs):
    net = get_model(name, classes=10, **kwargs)
    net.initialize(mx.init.Xavier(), ctx=ctx)
    return net


def input_grad_step(net, x, y, loss_fn):
    def step():
        xv = x.copy()
        xv.attach_grad()
        with autograd.record(train_mode=False):
            loss = loss_fn(net(xv), y)
        (grad,) = autograd.grad(loss, [xv])
        grad.wait_to_read()

    return step


def main(argv=None):
    args = parse_args(argv)
    setup_logging()
    logging.info("arguments: %s", vars(args))
    ctx = mx.gpu(0) if args.ctx == "gpu" else mx.cpu()
    shape = (args.batch_size, 3, args.size, args.size)
    x = mx.nd.random.uniform(shape=shape, ctx=ctx)
    y = mx.nd.zeros((args.batch_size,), ctx=ctx)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    base = make_net(args.model, ctx)
    base(x)
    variants = {"bn-eval": base}
    hybrid = make_net(args.model, ctx)
    hybrid.hybridize(static_alloc=True)
    hybrid(x)
    variants["bn-eval-hybrid"] = hybrid
    variants["bn-global-stats"] = make_net(args.model, ctx, norm_kwargs={"use_global_stats": True})
    variants["folded"] = fold_batchnorm(base, input_shape=shape, ctx=ctx, hybridize=False)
    variants["folded-hybrid"] = fold_batchnorm(base, input_shape=shape, ctx=ctx, hybridize=True)

    timings = {}
    for name, net in variants.items():
        net(x)
        timings[name] = time_call(input_grad_step(net, x, y, loss_fn), repeats=args.repeats)
        logging.info("%-16s %8.1f ms", name, timings[name]["median_ms"])
    ref = timings["bn-eval"]["median_ms"]
    rows = [[name, f"{t['median_ms']:.1f}", f"{ref / t['median_ms']:.2f}x"] for name, t in timings.items()]
    write_results(
        args.out, "folding",
        {"model": args.model, "batch_size": args.batch_size, "input": list(shape[1:]), "ctx": str(ctx),
         "timings": timings, "speedup_folded_hybrid_vs_bn_eval": ref / timings["folded-hybrid"]["median_ms"]},
        rows, ["variant", "fwd+input-bwd ms", "speed-up vs bn-eval"],
    )


if __name__ == "__main__":
    main()
