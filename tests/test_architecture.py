"""The package layering of docs/architecture.rst: every import points down or sideways."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bayes_dip"

#: tiers from the bottom; a unit imports only from its own tier or the ones below
LAYERS = (
    {"runtime", "output_folder", "checks"},
    {"ct"},
    {"data"},
    {"problem", "dip", "linalg"},
    {"laplace"},
    {"linearized"},
    {"metrics"},
    {"viz", "baselines"},
    {"studies"},
    {"reconstruct", "preflight"},
    {"cli"},
)


def _tier(unit: str) -> int:
    return next(i for i, units in enumerate(LAYERS) if unit in units)


def _imports() -> set[tuple[str, str, str]]:
    """``(importing unit, imported unit, file)`` for every bayes_dip import between units."""
    edges = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).parts
        unit = rel[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.ImportFrom):  # relative: resolve against the package
                base = rel[:len(rel) - node.level]
                names = [".".join(("bayes_dip", *base, *([node.module] if node.module else [])))]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "bayes_dip" and len(parts) > 1 and parts[1] != unit:
                    edges.add((unit, parts[1], str(path.relative_to(PACKAGE))))
    return edges


def test_every_unit_has_a_tier():
    units = {p.name.removesuffix(".py") for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").is_file()}
    assert units == set().union(*LAYERS)


def test_no_upward_import():
    edges = _imports()
    assert edges, "the import scan found nothing"
    upward = sorted(f"{file}: {src} imports {dst}" for src, dst, file in edges
                    if _tier(dst) > _tier(src))
    assert upward == []
