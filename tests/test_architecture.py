"""The trust boundary's import rules, checked rather than described (README: Layout).

Each top-level package may import only the project packages its rule names; ``server/`` reaches
into the node's ``client/`` only in the modules that, in simulation, play the node's operator;
and the ServerApp, which runs contributor code, reaches neither ``client/`` nor ``synthetic/``,
however indirectly.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("contract", "client", "server", "strategies", "models", "synthetic")

#: package -> the project packages (or single modules) it may import.
MAY_IMPORT = {
    "models": set(),
    "strategies": set(),
    "contract": {"models"},
    "client": {"contract", "models"},
    # a contributor's own pretraining trains with the node's loop and reads their own file with the
    # node's reader, so that it fails as the node would
    "synthetic": {"contract", "models", "client.training", "client.cohort"},
    "server": {"contract", "models", "strategies", "synthetic"},
}
#: server modules that, in simulation, also act as the node's operator; with the reason.
SERVER_MODULES_USING_THE_NODE = {
    "server.workspace": "starts the local node's ClientApp and pre-checks a submission with its rules",
    "server.config": "reads the local node's settings and policy from the same configuration",
    "server.cli": "the node operator's commands on a local node: cohort check, exports, policy; "
                  "and `cohortfl node`, which starts client/service.py",
    "server.intake_service": "pre-checks a package with the node's published rules (their errors)",
}
#: Modules that run in the ServerApp process, beside the contributor's strategy.
SERVERAPP = "server.app"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Project modules a file imports (anywhere in it, functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] in PACKAGES}


MODULES = {_module_name(p): _imports(p) for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def _allowed(importer: str, imported: str) -> bool:
    own, target = importer.split(".")[0], imported.split(".")[0]
    if own == target:
        return True
    if own == "server" and target == "client":
        return importer in SERVER_MODULES_USING_THE_NODE
    rules = MAY_IMPORT[own]
    return target in rules or any(imported == r or imported.startswith(r + ".") for r in rules)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_only_what_its_package_may(module):
    broken = sorted(i for i in MODULES[module] if not _allowed(module, i))
    assert not broken, f"{module} may not import {broken} (rules: tests/test_architecture.py, README)"


def _reachable(start: str) -> set[str]:
    """Every project module ``start`` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        for imported in MODULES.get(module, ()):
            target = imported if imported in MODULES else imported.rsplit(".", 1)[0]
            if target in MODULES and target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_serverapp_reaches_neither_the_node_nor_the_synthetic_disease():
    reached = _reachable(SERVERAPP)
    assert reached, "the walk found nothing: the test itself is broken"
    assert not {m for m in reached if m.split(".")[0] in {"client", "synthetic"}}, sorted(reached)


def test_the_rules_catch_a_forbidden_import():
    """The checker itself: a client module importing the workspace is refused."""
    assert not _allowed("client.node", "server.workspace")
    assert not _allowed("server.app", "client.policy")
    assert not _allowed("strategies.lr_decay", "contract.names")
    assert _allowed("synthetic.pretraining", "client.training")
    assert not _allowed("synthetic.pretraining", "client.node")
