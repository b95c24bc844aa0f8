"""The layering of docs/architecture.md holds for every import in gluon_robust/.

The layer table is read from the page itself, so the documentation and this check cannot drift apart:
a module may import from its own layer or from a lower one, never from a higher one (the one documented
exception aside), and every top-level module or package of the library has a layer.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, Set, Tuple

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gluon_robust"
DOC = ROOT / "docs" / "architecture.md"
#: Upward imports the page documents, as (importer, imported).
DOCUMENTED_EXCEPTIONS = {("validation", "attacks")}


def _layers() -> Dict[str, int]:
    layers: Dict[str, int] = {}
    for match in re.finditer(r"^layer (\d+)\s+\S+\s+(.+)$", DOC.read_text(encoding="utf-8"), re.M):
        for unit in match.group(2).split(","):
            layers[unit.strip()] = int(match.group(1))
    return layers


def _unit(module: str) -> str:
    """``gluon_robust.attacks.pgd`` -> ``attacks``; ``gluon_robust.cli`` -> ``cli``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] != "__init__" else ""  # "": the package's facade


def _imports() -> Set[Tuple[str, str, str]]:
    """Every (importer unit, imported unit, file) of the library, relative imports resolved."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        package = parts[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
                names = [target + "." + a.name for a in node.names] if target == "gluon_robust" else [target]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("gluon_robust."):
                    found.add((_unit(".".join(parts)), _unit(name), str(path.relative_to(ROOT))))
    return found


def test_the_page_places_every_module_once():
    layers = _layers()
    assert len(layers) >= 20, "the layer table of docs/architecture.md was not found"
    units = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    units |= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert sorted(units - set(layers)) == [], "modules with no layer in docs/architecture.md"
    assert sorted(set(layers) - units) == [], "docs/architecture.md names modules that do not exist"


def test_no_import_goes_to_a_higher_layer():
    layers = _layers()
    upward = sorted(
        f"{path}: {src} (layer {layers[src]}) imports {dst} (layer {layers[dst]})"
        for src, dst, path in _imports()
        if src and dst and src != dst and layers[dst] > layers[src] and (src, dst) not in DOCUMENTED_EXCEPTIONS
    )
    assert upward == []


def test_the_check_sees_imports():
    """The import scan is not vacuous: known downward edges are found, relative imports included."""
    edges = {(src, dst) for src, dst, _ in _imports()}
    assert {("attacks", "validation"), ("commands", "cli"), ("cluster", "evaluation"), ("training", "attacks"),
            ("validation", "attacks")} <= edges
