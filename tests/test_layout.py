"""The layout's promises that import-linter cannot see: what importing a package loads,
that every package says what it offers, and that no module borrows another's private names.
(The import directions themselves are import-linter contracts in pyproject.toml.)"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
import tomllib

import pytest

from conftest import REPO

PACKAGES = ("pfms_client", "pfms_server")
HEAVY = ("torch", "flwr")


def all_modules() -> list[str]:
    names = []
    for top in PACKAGES:
        package = importlib.import_module(top)
        names.append(top)
        names += [m.name for m in pkgutil.walk_packages(package.__path__, f"{top}.") if not m.name.endswith("__main__")]
    return sorted(names)


def loaded_after(code: str) -> list[str]:
    """The heavy packages in sys.modules after running ``code`` in a fresh interpreter."""
    probe = f"import sys; {code}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_the_aggregation_math_loads_neither_flwr_nor_torch():
    modules = [m for m in all_modules() if m.startswith("pfms_server.aggregation")]
    assert "pfms_server.aggregation.pfmsmtrec" in modules and len(modules) >= 10
    assert loaded_after("import pfms_server.aggregation") == []
    assert loaded_after("; ".join(f"import {m}" for m in modules)) == []
    assert loaded_after("from pfms_server.aggregation import make_rule, aggregate_round, ServerState") == []


@pytest.mark.parametrize("module", ["pfms_client", "pfms_server", "pfms_client.template", "pfms_client.data",
                                    "pfms_client.data.synthetic", "pfms_client.config"])
def test_importing_a_package_or_the_naming_contract_loads_neither_flwr_nor_torch(module):
    assert loaded_after(f"import {module}") == []


def test_every_package_lists_what_it_offers_and_each_name_resolves():
    packages = [m for m in all_modules() if hasattr(importlib.import_module(m), "__path__")]
    assert {"pfms_server.aggregation", "pfms_server.deploy", "pfms_server.experiments",
            "pfms_client.data.synthetic", "pfms_client.data.movielens"} <= set(packages)
    for name in packages:
        package = importlib.import_module(name)
        assert package.__all__, name
        for export in package.__all__:
            assert getattr(package, export) is not None, f"{name}.{export}"
        with pytest.raises(AttributeError):
            getattr(package, "no_such_name")


def test_no_module_imports_a_private_name_of_another_module():
    borrowed = []
    for top in PACKAGES:
        for path in sorted((REPO / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom):
                    borrowed += [f"{path.relative_to(REPO)}:{node.lineno} {alias.name}" for alias in node.names
                                 if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert borrowed == []


def test_the_contract_that_keeps_aggregation_apart_names_every_other_part_of_the_server():
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (apart,) = [c for c in contracts if c.get("source_modules") == ["pfms_server.aggregation"]
                and "pfms_server.report" in c["forbidden_modules"]]
    server = importlib.import_module("pfms_server")
    parts = {f"pfms_server.{m.name}" for m in pkgutil.iter_modules(server.__path__)} - {"pfms_server.aggregation"}
    assert set(apart["forbidden_modules"]) == parts
