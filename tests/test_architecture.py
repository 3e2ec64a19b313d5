"""The import rules of ARCHITECTURE.md, checked by parsing every module's imports with `ast`.

A failure names the file, the line and the import that broke a rule, so the fix is obvious:
move the shared code down into the room that may be imported, or pass a file instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ("app", "pipeline", "formats", "models", "labeling", "training", "evals", "ui")

# room -> rooms (or exact modules) it may import, besides itself. Anything not listed is refused.
ALLOWED = {
    "models": set(),
    "formats": set(),
    "labeling": {"formats", "evals.checks"},
    "training": {"models", "formats"},
    "evals": {"models", "formats"},
    "pipeline": {"formats", "training", "models"},
    "ui": {"models", "formats", "labeling", "training", "evals", "pipeline"},
    "app": {"models", "formats", "labeling", "training", "evals", "pipeline", "ui"},
}
# the ui modules that are not tabs, which any ui module may import: what the tabs share, the settings, a Space's login
UI_SHARED = ("ui.services", "ui.settings", "ui.space")


def our_modules() -> dict[str, Path]:
    """module name -> file, for every module of ours (tests, bench and the venv excluded)."""
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[0] not in ROOMS:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file, at any depth (lazy imports count too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from evals import checks` imports the module evals.checks
            found += [(node.lineno, f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
                      for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in ROOMS]


MODULES = our_modules()
EDGES = {module: imports_of(path, module) for module, path in MODULES.items()}


def room(module: str) -> str:
    return module.split(".")[0]


def allowed(importer: str, imported: str) -> bool:
    here, there = room(importer), room(imported)
    if there == "app":
        return False  # nothing imports app: it only wires
    if here == there:
        # the ui tabs do not import each other; what they share lives in ui/services.py
        return here != "ui" or imported == "ui" or imported in UI_SHARED
    rules = ALLOWED[here]
    return there in rules or any(imported == r or imported.startswith(r + ".") for r in rules)


def test_every_import_follows_the_rules():
    broken = [
        f"{MODULES[module].relative_to(ROOT)}:{line}: {module} imports {imported} "
        f"({room(module)} may import only {', '.join(sorted(ALLOWED[room(module)])) or 'nothing of ours'})"
        for module, edges in EDGES.items() for line, imported in edges if not allowed(module, imported)
    ]
    assert not broken, "import rules broken (ARCHITECTURE.md):\n" + "\n".join(broken)


def test_no_import_circles():
    graph = {m: {i for _, i in edges if i in MODULES and i != m} for m, edges in EDGES.items()}
    circles, state = [], {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(circles)


@pytest.mark.parametrize("importer, imported, ok", [
    ("labeling.pairs", "evals.checks", True),
    ("labeling.pairs", "evals.sales", False),
    ("evals.regression_data", "labeling.rows", False),
    ("training.run", "ui.services", False),
    ("ui.evals", "ui.arena", False),
    ("ui.evals", "ui.services", True),
    ("pipeline", "app", False),
    ("models.chat", "models.loading", True),
    ("formats", "models.loading", False),
])
def test_the_rule_check_itself_refuses_what_the_design_refuses(importer, imported, ok):
    assert allowed(importer, imported) is ok
