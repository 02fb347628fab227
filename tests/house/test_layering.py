"""The house's layering, held by a test: which stage may import which, no import circle, a torch-free
runtime layer and on-device kit, a light ``--help``, and one place that switches on the runtime."""

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

from tests import ROOT

PACKAGE = ROOT / "hwprune"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(node: ast.AST) -> set[str]:
    """What one statement imports (nothing, for any other statement): each module and ``module.name``."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return set()


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions."""
    return set().union(*(imported(node) for node in ast.walk(ast.parse(path.read_text()))))


def module_level_imports(path: Path) -> set[str]:
    """What importing ``path`` imports: its module-level imports (top-level ``try``/``if`` bodies included, not
    ``if TYPE_CHECKING``), not those inside functions (which run only when called)."""
    found = set()
    pending = list(ast.parse(path.read_text()).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.Try | ast.If):
            pending.extend([*node.body, *node.orelse, *getattr(node, "handlers", []), *getattr(node, "finalbody", [])])
        elif isinstance(node, ast.ExceptHandler):
            pending.extend(node.body)
        else:
            found |= imported(node)
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = nx.DiGraph()
for name, path in MODULES.items():
    GRAPH.add_node(name)
    GRAPH.add_edges_from((name, target) for target in imports(path) if target in MODULES and target != name)


def stage(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def stage_imports(source: str) -> set[str]:
    return {stage(t) for m in GRAPH if stage(m) == source for t in GRAPH.successors(m)} - {source}


@pytest.mark.parametrize("source, forbidden", [
    ("graph", {"importance", "cost", "search", "transform", "export", "evaluate", "runtime", "frontends",
               "pipeline"}),
    ("search", {"transform", "export", "runtime"}),
    ("cost", {"export", "search", "transform"}),
    ("export", {"cost", "search"}),
    ("runtime", {"graph", "cost", "export", "search", "transform", "importance", "evaluate"}),
    ("evaluate", {"search", "transform", "export"}),
    ("plan", {s for s in map(stage, MODULES) if s not in ("errors", "io", "plan")}),
    ("recovery", {"search", "cost", "importance", "pipeline"}),
    ("importance", {"transform", "recovery", "export", "search", "pipeline"}),
    ("search", {"pipeline", "recovery"}),
    ("transform", {"search", "cost", "importance", "pipeline", "recovery"}),
    ("report", {"pipeline", "transform", "recovery"}),
    ("frontends", {"pipeline", "search", "transform", "cost", "importance", "report", "recovery", "export"}),
])
def test_a_stage_imports_none_of_what_it_must_not(source, forbidden):
    assert not stage_imports(source) & forbidden


def test_only_the_drivers_import_the_pipeline():
    """The pipeline runs the stages; no stage reaches back into it (the CLI and the Python API drive it)."""
    assert {stage(m) for m in GRAPH if any(stage(t) == "pipeline" for t in GRAPH.successors(m))} <= {
        "pipeline", "cli", "_api", "gate"}


def test_only_the_hf_frontend_imports_transformers():
    """What hwprune knows of Hugging Face models lives in frontends/hf (the graph reaches it as a plugin)."""
    importers = {name for name, path in MODULES.items()
                 if any(t.split(".")[0] == "transformers" for t in imports(path))}
    assert importers and all(name.startswith("hwprune.frontends.hf.") for name in importers), importers


def test_no_import_circle_even_through_imports_inside_functions():
    packages = nx.DiGraph((stage(a), stage(b)) for a, b in GRAPH.edges if stage(a) != stage(b))
    assert list(nx.simple_cycles(packages)) == []


def test_no_import_circle_between_modules_inside_a_package_either():
    """Module by module, edges inside one package included (graph.spans and graph.stack once imported each
    other, one of them inside a function, unseen by the package-level check)."""
    assert list(nx.simple_cycles(GRAPH)) == []


def test_the_runtime_layer_and_the_on_device_kit_import_no_torch():
    """The kit runs on a bare JetPack: its scripts (export/*.py) import no torch at all, and no module that
    importing them or the runtime layer loads imports torch at module level. The torch runtime
    (``runtime.pytorch``) imports it inside its functions, which run only when a torch target is timed."""
    kit = {f"kit:{p.name}": p for p in (ROOT / "export").glob("*.py")}
    assert "kit:trt_build_and_time.py" in kit and "kit:profile_ops.py" in kit
    heavy = {"torch", "torchvision", "torch_pruning"}
    for name, path in kit.items():
        assert not {t.split(".")[0] for t in imports(path)} & heavy, f"{name} imports torch"
    loads = nx.DiGraph()
    for name, path in MODULES.items():
        loads.add_edges_from((name, t) for t in module_level_imports(path) if t in MODULES and t != name)
    roots = {m for m in MODULES if stage(m) == "runtime"}
    roots |= {t for p in kit.values() for t in module_level_imports(p) if t in MODULES}
    reached = set(roots).union(*(nx.descendants(loads, m) for m in roots if m in loads))
    for module in reached:
        found = {t.split(".")[0] for t in module_level_imports(MODULES[module])} & heavy
        assert not found, f"{module} imports {found} at module level"


def test_only_the_runtime_layer_switches_on_the_runtime():
    """``x.runtime == "tensorrt"`` and the like appear only in hwprune/runtime/ (and the device
    profile parser, which checks what a profile may say)."""
    found = []
    for name, path in MODULES.items():
        if stage(name) == "runtime" or name == "hwprune.targets":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(isinstance(s, ast.Attribute) and s.attr == "runtime" for s in sides) and any(
                        isinstance(s, ast.Constant) and s.value in ("onnxruntime", "tensorrt") for s in sides):
                    found.append(f"{name}:{node.lineno}")
    assert found == []


def test_help_imports_no_runtime_and_no_pruning_library_and_no_module_imports_tensorrt():
    code = ("import sys, hwprune.cli\n"
            "try:\n    hwprune.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = {'onnxruntime', 'tensorrt', 'torch_pruning', 'torch'} & set(sys.modules)\n"
            "assert not heavy, heavy\n"
            "import hwprune.pipeline.compile, hwprune.gate, hwprune.runtime.trt\n"
            "assert 'tensorrt' not in sys.modules, 'TensorRT is imported only where an engine is built or run'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-500:]


def test_no_module_at_the_package_top_shares_a_public_function_name():
    """Importing a submodule sets it as an attribute of its package: a module ``hwprune/compile.py`` would
    shadow the function ``hwprune.compile`` once anything imported it."""
    public = {"compile", "analyze", "apply", "recover", "latency", "bench"}
    top = {p.stem for p in PACKAGE.glob("*.py")} | {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert not top & public


def test_the_report_is_built_from_stage_results_alone():
    """The report module exports nothing, counts no FLOPs and asks no runtime: what it states, a stage made."""
    found = imports(PACKAGE / "report.py")
    doers = ("hwprune.export.onnx_export", "hwprune.export.copies", "torch.utils.flop_counter", "hwprune.runtime")
    assert not [name for name in found if name.startswith(doers) and not name.startswith("hwprune.runtime.timing")]
