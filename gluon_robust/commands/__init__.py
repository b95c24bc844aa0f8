"""The ``gluon-robust`` subcommands, one module each; importing this package registers them.

Each module is a thin wrapper: it declares its flags and calls library code
(:mod:`gluon_robust.jobs` and friends). Every module of this package is
imported, in name order, so a new subcommand needs no edit here.
"""

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    importlib.import_module(f"{__name__}.{_module}")
