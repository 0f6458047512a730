"""The package's layering: no module imports from a room above its own (checked on the source, every import)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pipelines"

# Rooms from the bottom up, each with the module prefixes it holds. A module may import its own room and the
# rooms of lower layers, never a room of its own layer or above (classical and deep do not import each other).
LAYERS: list[dict[str, tuple[str, ...]]] = [
    {"base": ("pipelines", "pipelines.errors", "pipelines.atomic", "pipelines.settings", "pipelines.javacheck")},
    {"plotting": ("pipelines.plotting",)},
    {"runs": ("pipelines.runs",)},
    {"report": ("pipelines.report",)},
    {"tracking": ("pipelines.tracking",)},
    {"launch": ("pipelines.launch",)},
    {"engines": ("pipelines.engines",)},
    {"data": ("pipelines.data",)},
    {"protocol": ("pipelines.protocol",)},
    {"ingest": ("pipelines.ingest",)},
    {"classical": ("pipelines.classical",), "deep": ("pipelines.deep",), "matrix": ("pipelines.matrix",)},
    {"sweep": ("pipelines.sweep",), "pack": ("pipelines.pack",)},
    {"registry": ("pipelines.registry",)},
    {"config": ("pipelines.config",)},
    {"plan": ("pipelines.plan",)},
    {"pipeline": ("pipelines.pipeline",), "predict": ("pipelines.predict",)},
    {"console": ("pipelines.console",)},
    {"api": ("pipelines.api",)},
    {"cli": ("pipelines.cli", "pipelines.__main__")},
]


# The package root re-exports the public API lazily (PEP 562 `__getattr__`, on first use), and the runs and
# predict packages, which share their names with API functions (`pipelines.runs`, `pipelines.predict`),
# forward calls to them: the only upward imports, all inside functions run on use.
FACADE = {("pipelines", "pipelines.api"), ("pipelines.runs", "pipelines.api"), ("pipelines.predict", "pipelines.api")}


def room_of(module: str) -> tuple[int, str]:
    """(layer index, room name) of a dotted module name: the longest matching prefix wins."""
    best: tuple[int, str, str] | None = None
    for index, rooms in enumerate(LAYERS):
        for room, prefixes in rooms.items():
            for prefix in prefixes:
                inside = module.startswith(prefix + ".") and prefix != "pipelines"  # the root holds only itself
                if (module == prefix or inside) and (best is None or len(prefix) > len(best[2])):
                    best = (index, room, prefix)
    assert best is not None, f"{module} is in no room of LAYERS: add it"
    return best[0], best[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every `pipelines` import in a file, including those inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            target = max((n for n in names if _is_module(n)), key=len, default=node.module)
            out.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return [(line, mod) for line, mod in out if mod == "pipelines" or mod.startswith("pipelines.")]


def _is_module(dotted: str) -> bool:
    base = PACKAGE.parent.joinpath(*dotted.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_room():
    for path in SOURCES:
        room_of(module_name(path))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_no_import_goes_up_or_sideways(path):
    here = module_name(path)
    layer, room = room_of(here)
    bad = []
    for line, target in imports_of(path):
        their_layer, their_room = room_of(target)
        if (here, target) in FACADE:
            continue
        if their_room != room and their_layer >= layer:
            bad.append(f"line {line}: {target} ({their_room}, layer {their_layer} >= {layer})")
    assert not bad, f"{here} ({room}) imports upward or sideways:\n" + "\n".join(bad)


def test_the_checker_catches_an_upward_import(tmp_path):
    """The check can fail: an engine module importing the stage registry is reported."""
    fake = PACKAGE / "engines" / "base.py"
    source = fake.read_text() + "\nfrom pipelines.registry import STAGES\n"
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    found = [t for _, t in imports_of(probe) if room_of(t)[0] >= room_of("pipelines.engines.base")[0]]
    assert "pipelines.registry" in found
