"""The ``gluon-robust`` command line.

Every subcommand shares the same model, data and run flags (GluonCV-style
dashed names) and the same error handling: a user error prints one line on
stderr and exits with status 2, without a traceback unless ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Dict, Optional, Sequence, Tuple

from .cli_values import parse_bounds, parse_count, parse_ctx, parse_floats, parse_fraction
from .errors import ConfigError, GluonRobustError
from .interrupts import handle_signals, interrupt_message
from .validation import check_contexts, check_int, check_out_dir, flag_message

__all__ = ["main", "emit", "emit_warnings", "parse_fraction", "parse_count", "parse_floats", "check_common_args",
           "parse_ctx", "setup_logging", "build_parser"]

logger = logging.getLogger("gluon_robust")

PROG = "gluon-robust"


def setup_logging(debug: bool = False, verbose: bool = False) -> None:
    """Log warnings to stderr (everything with ``debug``).

    The package still emits its INFO records (to handlers a host application or
    a test harness installed), but the terminal only shows warnings unless
    ``--verbose`` (INFO) or ``--debug`` (everything): a failing command prints
    exactly one line on stderr, its error.
    """
    root = logging.getLogger()
    if not root.handlers:  # like logging.basicConfig, but with a level on the handler
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    logging.getLogger("gluon_robust").setLevel(logging.DEBUG if debug else logging.INFO)


def _close_progress_bars() -> None:
    """Close progress bars an exception left open, so that the error starts on a clean line."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def emit(text: str = "") -> None:
    """Write a command's result to stdout; commands print through this, logs go to stderr."""
    print(text)


def emit_warnings(messages: Sequence[str], stderr: bool = False) -> None:
    """Print each warning of a result as a ``WARNING: ...`` line, on stdout (with a table) or stderr
    (when stdout holds JSON that must stay parseable)."""
    for message in messages:
        print(f"WARNING: {message}", file=sys.stderr if stderr else sys.stdout)


# ------------------------------------------------------------- shared flags
#: Help of the model flags; a command may word some of them its own way (``train`` does).
MODEL_FLAG_HELP: Dict[str, str] = {
    "model": "gluoncv.model_zoo name, or an exported net-symbol.json",
    "config": "model config YAML (model_configs/*.yaml) or a bundled config name",
    "params": ".params file with the weights",
    "pretrained": "GluonCV pretrained weights from the offline cache",
    "classes": "number of classes",
    "mean": "normalisation mean: one value or one per channel",
    "std": "normalisation std: one value or one per channel",
    "bounds": "pixel range LO,HI (default 0,1)",
}


def add_model_args(parser: argparse.ArgumentParser, required: bool = True, *,
                   help_texts: Optional[Dict[str, str]] = None, inference: bool = True) -> None:
    """``--model NAME | --config FILE`` and the weights and preprocessing overrides.

    ``help_texts`` rewords some flags' help (keys as in :data:`MODEL_FLAG_HELP`); ``inference`` adds
    ``--input-size`` and ``--no-fold``, which only a model under evaluation takes.
    """
    texts = {**MODEL_FLAG_HELP, **(help_texts or {})}
    group = parser.add_argument_group("model")
    source = group.add_mutually_exclusive_group(required=required)
    source.add_argument("--model", help=texts["model"])
    source.add_argument("--config", help=texts["config"])
    group.add_argument("--params", help=texts["params"])
    group.add_argument("--pretrained", action="store_true", help=texts["pretrained"])
    group.add_argument("--classes", type=int, help=texts["classes"])
    group.add_argument("--mean", type=parse_floats, help=texts["mean"])
    group.add_argument("--std", type=parse_floats, help=texts["std"])
    group.add_argument("--bounds", type=parse_bounds, help=texts["bounds"])
    if inference:
        group.add_argument("--input-size", type=parse_floats, help="C,H,W or H,W or N")
        group.add_argument("--no-fold", action="store_true", help="keep BatchNorm (slow, wrong eval-mode gradients)")


def add_data_args(parser: argparse.ArgumentParser, default: Optional[str] = None) -> None:
    """``--data SRC --split --limit``."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data", default=default, required=default is None,
        help="mnist-sample, npz:PATH, folder:PATH, mnist, fashion-mnist, cifar10, cifar100",
    )
    group.add_argument("--split", default="test", choices=("train", "test"))
    group.add_argument("--limit", type=int, help="use only the first N samples")
    group.add_argument("--labels", metavar="FILE|predicted",
                       help="class names of the model's outputs (JSON list or {name: index}, or text, one name a "
                            "line), or 'predicted': label each sample with the model's own clean prediction")


def parse_memory(text: str) -> int:
    """Parse a memory size for ``--max-memory``: ``4G``, ``512M``, ``4GiB`` or bytes."""
    from .memory import parse_size

    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_run_args(parser: argparse.ArgumentParser, out_default: Optional[str] = None) -> None:
    """``--ctx --batch-size --max-memory --seed --out --debug``."""
    group = parser.add_argument_group("run")
    group.add_argument("--ctx", type=parse_ctx, default="cpu", help="cpu, gpu:0, or a comma-separated list")
    group.add_argument("--batch-size", type=int, default=None,
                       help="samples per batch (default: auto, the largest that fits --max-memory, at most 128)")
    group.add_argument("--max-memory", type=parse_memory, default=None, metavar="SIZE",
                       help="memory budget for the automatic batch size, e.g. 4G, 512M or bytes (default 4G)")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--out", default=out_default, required=out_default is None, help="output directory")


def check_common_args(args: argparse.Namespace) -> None:
    """Validate the flags many commands share, before any of them starts work.

    ``--ctx`` (a device list) must name devices of this machine, and only one
    unless the command trains data-parallel; ``--out`` must be a writable
    directory; counts must be positive and ``--seed`` non-negative;
    ``--cluster`` must be ``local:N`` or ``tcp://HOST:PORT``.
    """
    for name in ("batch_size", "limit", "steps", "restarts", "max_queries", "eot_samples", "fit_limit"):
        value = getattr(args, name, None)
        if value is not None:
            check_int(name, value)
    for name in ("max_examples", "max_images"):  # 0: none shown
        value = getattr(args, name, None)
        if value is not None:
            check_int(name, value, minimum=0)
    if getattr(args, "seed", None) is not None:
        check_int("seed", args.seed, minimum=0, maximum=2 ** 32 - 1)
    if isinstance(getattr(args, "ctx", None), list):
        check_contexts("ctx", args.ctx, multiple=False)
    if hasattr(args, "out") and args.out is not None:
        check_out_dir("out", args.out)
    if getattr(args, "cluster", None) is not None:
        from .cluster import parse_cluster  # pure Python: Dask is imported only when the cluster is used

        parse_cluster(args.cluster)
        if getattr(args, "shard", None):
            raise ConfigError("--cluster and --shard cannot be combined: the cluster runs every shard")
    if getattr(args, "chunk_size", None) is not None:
        check_int("chunk_size", args.chunk_size)
        if getattr(args, "cluster", None) is None:
            raise ConfigError("--chunk-size needs --cluster")


def model_from_args(args: argparse.Namespace):
    """Build the Classifier the model flags describe."""
    from .config import load_config
    from .model import load_classifier

    size = None
    if args.input_size is not None:
        size = tuple(args.input_size)  # parse_input_size rejects non-integers such as 64.5
        size = size[0] if len(size) == 1 else size
    labels = getattr(args, "labels", None)
    data_shape = _data_shape(args) if size is None and args.model else None
    if data_shape is not None:
        return _model_for_data(args, data_shape, labels)
    return load_classifier(
        load_config(args.config) if args.config else args.model,  # --config NAME is a config, never a zoo name
        params=args.params,
        pretrained=args.pretrained,
        classes=args.classes,
        mean=args.mean,
        std=args.std,
        bounds=args.bounds,
        input_size=size,
        ctx=args.ctx[0],
        fold=not args.no_fold,
        labels=None if labels == "predicted" else labels,
    )


def _data_shape(args: argparse.Namespace) -> Optional[Tuple[int, int, int]]:
    """The sample shape of ``--data`` when it decides the model's input size (array data), else None.

    Opening a source decodes no image; an array source is kept on ``args`` for
    :func:`data_from_args`. A folder is resized to the model's size instead.
    """
    from .data import FolderSource, load_data

    if not getattr(args, "data", None):
        return None
    source = load_data(args.data, split=getattr(args, "split", "test"), limit=getattr(args, "limit", None))
    if isinstance(source, FolderSource):
        return None
    args.opened_data = source
    return tuple(source.sample_shape)


def _model_for_data(args: argparse.Namespace, shape: Tuple[int, int, int], labels: Optional[str]):
    """The ``--model`` classifier built for inputs of the data's ``shape``; a net that cannot take them is an error."""
    from .errors import ModelError
    from .model import load_classifier

    try:
        return load_classifier(
            args.model, params=args.params, pretrained=args.pretrained, classes=args.classes, mean=args.mean,
            std=args.std, bounds=args.bounds, input_size=shape, ctx=args.ctx[0], fold=not args.no_fold,
            labels=None if labels == "predicted" else labels,
        )
    except ModelError as err:
        if "does not accept inputs of size" not in str(err):
            raise
        raise ModelError(f"data {args.data} has samples of shape {shape} but model {args.model} does not accept "
                         f"that input size ({str(err).split(': ', 1)[-1]}); resize the data to the model's size "
                         "(e.g. 3,224,224) or pass --input-size") from None


def data_from_args(args: argparse.Namespace, model=None):
    """Open the data source the data flags describe, sized and labelled for ``model``.

    A folder's class sub-folders are labelled through the model's class table
    (:mod:`gluon_robust.data.labels`); ``--labels predicted`` labels every
    sample with the model's clean prediction instead.
    """
    from .data import PredictedLabels, check_fits, load_data

    size = tuple(model.input_size[1:]) if model is not None and model.input_size else None
    table = getattr(model, "class_table", None)
    predicted = getattr(args, "labels", None) == "predicted"
    opened = getattr(args, "opened_data", None)
    if opened is not None and (size is None or tuple(opened.sample_shape[1:]) == size):
        source = opened
    else:
        source = load_data(args.data, split=args.split, limit=args.limit, input_size=size,
                           class_table=None if predicted else table,
                           num_classes=None if predicted else getattr(model, "num_classes", None))
    if model is not None:
        check_fits(model, source)
    if predicted:
        if model is None:
            raise ConfigError("--labels predicted needs a model")
        source = PredictedLabels(source, model, batch_size=getattr(args, "batch_size", None) or 256)
    return source


# --------------------------------------------------------------- commands
Command = Callable[[argparse.Namespace], int]
COMMANDS: Dict[str, Tuple[Callable[[argparse.ArgumentParser], None], Command, str]] = {}


def command(name: str, help_text: str) -> Callable:
    """Register ``configure(parser)`` and ``run(args)`` for a subcommand."""

    def wrap(configure: Callable[[argparse.ArgumentParser], None]) -> Callable:
        def bind(run: Command) -> Command:
            COMMANDS[name] = (configure, run, help_text)
            return run

        return bind

    return wrap


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are ConfigErrors, so that :func:`main` prints them as one line
    and returns 2 like every other bad input (argparse would print the usage too and raise SystemExit)."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(f"{message} (see {self.prog} --help)")

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        # argparse drops a value spelled "--" (``--fpr=--``) and leaves an empty list in its place
        for arg in args or ():
            if arg == "--":  # what follows belongs to a wrapped command (launch)
                break
            flag, sep, value = str(arg).partition("=")
            if sep and flag.startswith("--") and value == "--":
                self.error(f"argument {flag}: expected a value, got '--'")
        return super().parse_known_args(args, namespace)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every registered subcommand."""
    from . import commands  # noqa: F401  (registers the subcommands)
    from ._version import __version__

    parser = _Parser(prog=PROG, description="Adversarial robustness for MXNet Gluon and GluonCV.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (configure, _, help_text) in COMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text)
        child.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
        child.add_argument("-v", "--verbose", action="store_true", help="show progress logs")
        configure(child)
        _FLAGS[name] = frozenset(child._option_string_actions)  # noqa: SLF001 -- argparse keeps no public list
    return parser


#: Each subcommand's option strings, so that errors can name the flag a bad value came from.
_FLAGS: Dict[str, frozenset] = {}


def _interrupted(err: KeyboardInterrupt) -> int:
    """Print an interrupted command's one line (what it kept, how to resume); 130 for SIGINT, 143 for SIGTERM."""
    _close_progress_bars()
    print(f"{PROG}: {interrupt_message(err)}", file=sys.stderr)
    return int(getattr(err, "exit_code", 130))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``gluon-robust``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    command_name = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        setup_logging(args.debug, args.verbose)
        logger.debug("arguments: %s", vars(args))
        command_name = args.command
        check_common_args(args)
        with handle_signals():  # SIGINT and SIGTERM stop the command at a safe point (gluon_robust.interrupts)
            return COMMANDS[args.command][1](args)
    except GluonRobustError as err:
        if debug:
            raise
        _close_progress_bars()
        message = flag_message(err, _FLAGS.get(command_name, ())).replace("\n", " ")
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return int(getattr(err, "exit_code", 2))  # 2, or the status the error carries (a launched job's)
    except KeyboardInterrupt as err:
        return _interrupted(err)
    except Exception as err:  # noqa: BLE001 -- the CLI turns any failure into one line
        if debug:
            raise
        _close_progress_bars()
        first = (str(err).strip().splitlines() or [""])[0]
        print(f"{PROG}: error: {type(err).__name__}: {first} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # `python -m gluon_robust.cli`: use the package module, where the subcommands register
    # themselves, not this __main__ copy of it (whose COMMANDS would stay empty).
    from gluon_robust.cli import main as _main

    sys.exit(_main())
