"""The layer rule of ARCHITECTURE.md, checked on the source.

Imports point downwards only:
    apps > system > engine > parallel > model > api
`graphs/` and `interfaces/` import only `realflow.api` (plus torch and the standard
library / third-party libraries). Every import statement counts, including ones
inside functions: a function-local import must not be used to dodge a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ORDER = ["api", "model", "parallel", "engine", "system", "apps"]
# Packages at the level of a layer that do not appear in ORDER, with the layers
# they may import. `tasks` (bundled tasks) and `assets` (shipped files) are data.
SIDE = {"tasks": {"api", "assets"}, "assets": set()}


def _allowed(layer: str) -> set[str]:
    if layer in SIDE:
        return SIDE[layer] | {layer}
    below = ORDER[: ORDER.index(layer) + 1]
    return set(below) | {"tasks", "assets"}


def _realflow_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == "realflow" or name.startswith("realflow."):
                found.append((node.lineno, name))
    return found


def _sub(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def _engine_files():
    for path in sorted((ROOT / "realflow").rglob("*.py")):
        rel = path.relative_to(ROOT / "realflow")
        if len(rel.parts) > 1:
            yield rel.parts[0], path


@pytest.mark.parametrize("layer,path", list(_engine_files()), ids=lambda x: str(x))
def test_engine_layers_point_downwards(layer: str, path: Path) -> None:
    allowed = _allowed(layer) if (layer in ORDER or layer in SIDE) else None
    if allowed is None:
        pytest.fail(f"realflow/{layer} is not a known layer; add it to ARCHITECTURE.md and this test")
    for lineno, name in _realflow_imports(path):
        sub = _sub(name)
        if sub is None or sub in ("__version__",):
            continue
        if sub in ("graphs", "interfaces"):
            # Only the application layer may load plug-ins (by registry name).
            assert layer in ("apps", "system"), f"{path}:{lineno} imports {name}"
            continue
        assert sub in allowed, f"{path}:{lineno}: layer '{layer}' imports {name} (allowed: {sorted(allowed)})"


def _plugin_files():
    for folder in ("graphs", "interfaces"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield folder, path


@pytest.mark.parametrize("folder,path", list(_plugin_files()), ids=lambda x: str(x))
def test_plugins_import_only_api(folder: str, path: Path) -> None:
    own = {"graphs": "realflow.graphs", "interfaces": "realflow.interfaces"}[folder]
    for lineno, name in _realflow_imports(path):
        ok = name.startswith("realflow.api") or name.startswith(own) or name == "realflow"
        ok = ok or name.startswith("realflow.tasks") or name.startswith("realflow.assets")
        assert ok, f"{path}:{lineno}: {folder}/ may import only realflow.api, got {name}"


def test_checker_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from realflow.system import master\n")
    assert _realflow_imports(bad) == [(2, "realflow.system"), (2, "realflow.system.master")]
