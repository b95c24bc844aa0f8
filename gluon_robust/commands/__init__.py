"""The ``gluon-robust`` subcommands, one module each; importing this package registers them.

Each module is a thin wrapper: it declares its flags and calls library code
(:mod:`gluon_robust.jobs` and friends).
"""

from . import attack, demo, evaluate, listing, train  # noqa: F401  (registration side effects)
