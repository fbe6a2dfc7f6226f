"""The runtime's public surface is pinned, and services import nothing private."""

from __future__ import annotations

import ast
from pathlib import Path

import shared.runtime

ROOT = Path(__file__).resolve().parents[2]

EXPECTED = {
    "Budgets",
    "Checkpoint",
    "RateLimiter",
    "cancel_suspended",
    "finish_run",
    "state_id",
    "HttpServer",
    "JobContext",
    "ServiceBroker",
    "kv_readable",
    "Worker",
    "build_http_app",
    "check_freshness",
    "Freshness",
    "read_freshness",
    "dead_letter_unserved_requests",
    "deliver_signal",
    "failure_streak",
    "get_run",
    "job",
    "no_checkpoint",
    "publish_cancel_hint",
    "read_steps",
    "request_cancel",
    "run_app",
    "run_service",
    "store_readable",
    "time_out_silent_runs",
}


def test_exported_members() -> None:
    assert set(shared.runtime.__all__) == EXPECTED
    for name in shared.runtime.__all__:
        assert hasattr(shared.runtime, name), name


def _private_imports(path: Path) -> list[str]:
    found = []
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            names = [alias.name for alias in node.names]
            if any(p.startswith("_") and not p.startswith("__") for p in parts) or any(
                n.startswith("_") for n in names
            ):
                found.append(f"{path.relative_to(ROOT)}: from {node.module} import {', '.join(names)}")
        elif isinstance(node, ast.Import):
            found += [
                f"{path.relative_to(ROOT)}: import {a.name}"
                for a in node.names
                if any(p.startswith("_") and not p.startswith("__") for p in a.name.split("."))
            ]
    return found


def test_services_import_nothing_private() -> None:
    problems = [p for path in sorted((ROOT / "services").rglob("*.py")) for p in _private_imports(path)]
    assert problems == []


def test_the_shared_package_reaches_the_runtime_only_through_its_public_names() -> None:
    """The CLI, the read models and the operations use `shared.runtime`, never its `_*` modules."""
    outside = [p for p in sorted((ROOT / "shared").rglob("*.py")) if (ROOT / "shared" / "runtime") not in p.parents]
    problems = [p for path in outside for p in _private_imports(path) if "shared.runtime._" in p]
    assert problems == []


def test_services_use_the_runtime_only_through_its_public_names() -> None:
    problems = []
    for path in sorted((ROOT / "services").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module == "shared.runtime":
                problems += [
                    f"{path.relative_to(ROOT)}: {a.name}" for a in node.names if a.name not in shared.runtime.__all__
                ]
    assert problems == []


def test_runtime_modules_are_private() -> None:
    modules = sorted(p.name for p in (ROOT / "shared" / "runtime").glob("*.py") if p.name != "__init__.py")
    assert [m for m in modules if not m.startswith("_")] == []
