"""Flower's private API, named where it is used: an upgrade learns here what moved, not in a hung run.

``server/engine.py`` starts the simulation engine in-process, ``client/executor.py`` serves the
SuperNode's tasks and ``server/sandbox.py`` the SuperLink's, all through internals of Flower, and
``server/refusals.py`` reads the error codes the SuperLink writes itself; every other module uses
only Flower's public packages. These tests pin both facts.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from importlib.metadata import version
from pathlib import Path

import pytest

import client.executor
import server.engine
import server.refusals
import server.sandbox
from server.engine import FLOWER_VERSION

#: module file -> the private Flower symbols it declares.
USERS = {Path(m.__file__).resolve(): m.PRIVATE_FLOWER_API
         for m in (server.engine, client.executor, server.sandbox, server.refusals)}
PRIVATE_FLOWER_API = sorted({symbol for symbols in USERS.values() for symbol in symbols})

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = ("flwr.app", "flwr.serverapp", "flwr.serverapp.strategy", "flwr.clientapp")
UPGRADE_HINT = (f"server/engine.py, client/executor.py and server/sandbox.py were written against "
                f"flwr {FLOWER_VERSION}; installed is flwr {version('flwr')}. "
                "Re-read these internals in the installed Flower")


def test_the_installed_flower_is_the_one_the_engine_was_written_for():
    assert version("flwr") == FLOWER_VERSION, f"{UPGRADE_HINT}: {PRIVATE_FLOWER_API}"


@pytest.mark.parametrize("module, name", PRIVATE_FLOWER_API)
def test_every_private_symbol_still_exists(module, name):
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as ex:
        pytest.fail(f"{UPGRADE_HINT}: {module}.{name} is gone ({ex})")
    assert found is not None


def test_run_simulation_still_takes_the_arguments_the_engine_passes():
    from flwr.simulation.run_simulation import _run_simulation

    passed = {"num_supernodes", "exit_event", "client_app", "server_app", "server_app_context",
              "backend_config", "app_dir", "is_app", "run", "verbose_logging"}
    missing = passed - set(inspect.signature(_run_simulation).parameters)
    assert not missing, f"{UPGRADE_HINT}: _run_simulation no longer takes {sorted(missing)}"


def _flower_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every ``from flwr... import name`` and ``import flwr...`` in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("flwr"):
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name.startswith("flwr")]
    return found


def test_only_the_engine_uses_flower_beyond_its_public_packages():
    offenders = []
    for folder in ("contract", "client", "server", "strategies", "models", "synthetic"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for module, name in _flower_imports(path):
                if module in PUBLIC and not name.startswith("_"):
                    continue
                if (module, name) in USERS.get(path.resolve(), ()):
                    continue
                offenders.append(f"{path.relative_to(ROOT)}: {module}.{name}")
    assert not offenders, ("private Flower API not declared in its module's PRIVATE_FLOWER_API: "
                           + "; ".join(offenders))
