"""The package's layering, checked on its source: imports only go down, modules stay small.

Layers, bottom to top (see the package docstring): ``_checks`` (argument checks), ``metrics``
(maps in, numbers out), ``engine`` (model in, maps out), ``monitor`` (the Lightning side),
``analysis`` (research tools). The Lightning namespaces and wandb are the monitor's business:
the engine and the metrics never import them, and the monitor only for type checking (its
``SaliencyMonitor`` classes live in ``callback.py`` and ``lightning.py``).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "saliency_monitor"
MODULES = sorted(PACKAGE.rglob("*.py"))
FRAMEWORKS = ("pytorch_lightning", "lightning", "wandb")
ALIASES = {"combine", "context_saliency", "sanity", "surrogate"}
"""Top-level modules kept so that 0.1's import paths work; nothing inside the package uses them."""
ALLOWED = {
    "_checks": set(),
    "metrics": {"_checks", "metrics"},
    "engine": {"_checks", "metrics", "engine"},
    "monitor": {"_checks", "metrics", "engine", "monitor"},
    "analysis": {"_checks", "metrics", "engine", "analysis", "monitor.probes"},
}
"""What each layer may import from the package (``monitor.probes``: the batch reader)."""


@dataclass(frozen=True)
class Import:
    module: str
    """The imported module, absolute (``saliency_monitor.engine.methods``, ``torch``, ...)."""
    type_checking: bool
    """Inside ``if TYPE_CHECKING:`` (never executed)."""


def layer_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imports_of(path: Path) -> list[Import]:
    package = ".".join(("saliency_monitor", *path.relative_to(PACKAGE).with_suffix("").parts[:-1]))
    if path.name == "__init__.py":
        package = ".".join(("saliency_monitor", *path.relative_to(PACKAGE).parts[:-1]))
    tree = ast.parse(path.read_text())
    guarded = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for statement in block.body
        for node in ast.walk(statement)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, id(node) in guarded) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names = [f"{module}.{alias.name}" for alias in node.names]
            found += [Import(name if name.startswith("saliency_monitor.") else module, id(node) in guarded)
                      for name in names]
    return found


def inner(name: str) -> str | None:
    """``saliency_monitor.engine.methods`` -> ``engine.methods``; None outside the package."""
    return name.removeprefix("saliency_monitor.") if name.startswith("saliency_monitor.") else None


def layer_modules() -> list[Path]:
    return [path for path in MODULES if layer_of(path) in ALLOWED]


@pytest.mark.parametrize("path", layer_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_only_go_down(path: Path) -> None:
    layer = layer_of(path)
    allowed = ALLOWED[layer]
    for imported in imports_of(path):
        name = inner(imported.module)
        top = imported.module.split(".")[0]
        lightning = top in ("pytorch_lightning", "lightning")
        if name is not None:
            assert name.split(".")[0] in allowed or any(name.startswith(f"{a}.") or name == a for a in allowed), (
                f"{path.relative_to(PACKAGE)} ({layer}) imports {name}"
            )
            assert name.split(".")[0] not in ALIASES, f"{path.relative_to(PACKAGE)} imports the alias {name}"
        elif (top in FRAMEWORKS and layer in ("_checks", "metrics", "engine")) or (lightning and layer != "monitor"):
            pytest.fail(f"{path.relative_to(PACKAGE)} ({layer}) imports {imported.module}")
        elif lightning:
            assert imported.type_checking, f"{path.relative_to(PACKAGE)} imports {imported.module} at run time"


def test_the_rules_see_real_imports() -> None:
    """The checker reads relative imports and TYPE_CHECKING blocks (or the test above proves nothing)."""
    logic = {(i.module, i.type_checking) for i in imports_of(PACKAGE / "monitor" / "logic.py")}
    assert ("saliency_monitor.monitor.config.MonitorConfig", False) in logic
    assert ("saliency_monitor.engine.methods.MONITOR_METHODS", False) in logic
    assert ("pytorch_lightning", True) in logic
    compute = {i.module for i in imports_of(PACKAGE / "engine" / "compute.py")}
    assert "saliency_monitor.metrics.maps.resize_maps" in compute
    assert {"saliency_monitor.engine.methods.parse_methods", "torch"} <= compute


def test_the_monitor_imports_no_lightning_at_run_time_and_the_callbacks_do() -> None:
    runtime = {i.module for path in MODULES for i in imports_of(path) if not i.type_checking}
    frameworks = {m for m in runtime if m.split(".")[0] in ("pytorch_lightning", "lightning")}
    importers = {
        path.name for path in MODULES for i in imports_of(path)
        if not i.type_checking and i.module.split(".")[0] in ("pytorch_lightning", "lightning")
    }
    assert frameworks and importers == {"callback.py", "lightning.py"}


def code_lines(node: ast.AST) -> int:
    """Lines of a function or class, its docstring left out."""
    lines = node.end_lineno - node.lineno + 1  # type: ignore[attr-defined]
    body = getattr(node, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        lines -= body[0].end_lineno - body[0].lineno + 1  # type: ignore[operator]
    return lines


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_small(path: Path) -> None:
    """No module over ~400 lines, no function over ~60 lines of code, no class over 300."""
    text = path.read_text()
    assert text.count("\n") <= 400, f"{path.relative_to(PACKAGE)}: {text.count(chr(10))} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert code_lines(node) <= 60, f"{path.relative_to(PACKAGE)}: {node.name}() {code_lines(node)} lines"
        elif isinstance(node, ast.ClassDef):
            assert code_lines(node) <= 300, f"{path.relative_to(PACKAGE)}: class {node.name} {code_lines(node)} lines"


def string_literals(path: Path) -> set[str]:
    """Every string constant of a module that is not a docstring."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    }


def test_methods_are_named_only_in_their_registry() -> None:
    from saliency_monitor.engine.methods import METHODS

    registry = PACKAGE / "engine" / "methods.py"
    assert set(METHODS) <= string_literals(registry)
    for path in MODULES:
        if path != registry:
            named = string_literals(path) & set(METHODS)
            assert not named, f"{path.relative_to(PACKAGE)} names the methods {sorted(named)}"


def test_the_import_paths_of_0_1_still_work() -> None:
    """What the 0.1 README showed stays importable from there (aliases of the new homes)."""
    import saliency_monitor
    from saliency_monitor import analysis, engine, metrics
    from saliency_monitor.analysis import layer_weights, sanity, surrogate
    from saliency_monitor.combine import combine_maps, feature_spread
    from saliency_monitor.combine import layer_weights as old_layer_weights
    from saliency_monitor.context_saliency import context_aware_saliency
    from saliency_monitor.engine import context_saliency
    from saliency_monitor.metrics import rank_correlation, structural_similarity
    from saliency_monitor.sanity import cascading_randomization
    from saliency_monitor.surrogate import fit_bilinear_surrogate

    assert (combine_maps, feature_spread, old_layer_weights) == (
        metrics.combine_maps, layer_weights.feature_spread, layer_weights.layer_weights)
    assert context_aware_saliency is context_saliency.context_aware_saliency
    assert cascading_randomization is sanity.cascading_randomization
    assert fit_bilinear_surrogate is surrogate.fit_bilinear_surrogate
    assert rank_correlation is metrics.correlation.rank_correlation
    assert structural_similarity is metrics.similarity.structural_similarity
    assert saliency_monitor.compute_saliency is engine.compute_saliency
    assert saliency_monitor.default_layers is engine.default_layers
    assert analysis.__doc__ and engine.__doc__ and metrics.__doc__


def test_the_engine_runs_without_importing_lightning_wandb_or_zennit() -> None:
    """A fresh interpreter computing gradient maps loads none of them (the relevance methods load zennit)."""
    import subprocess
    import sys

    script = (
        "import sys, torch, saliency_monitor as s\n"
        "m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),"
        " torch.nn.Linear(4, 3))\n"
        "s.compute_saliency(m, torch.randn(2, 3, 8, 8), [0, 1], ['0'], ['norm_grad', 'conv3x3_depthwise:max'],"
        " meta_lr=0.01)\n"
        "print(sorted(n for n in ('pytorch_lightning', 'lightning', 'wandb', 'zennit') if n in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
