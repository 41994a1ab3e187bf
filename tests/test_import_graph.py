"""Imports run one way: kernels -> op (myxtts_ops) -> loss -> tools (myxtts_ops.tools).

Checks the installed packages with ``scripts/import_graph.py`` (every import
statement, function-level ones included): no cycle, no op module importing the
loss side (``myxtts``, ``myxtts_loss``) or the tools, no loss module importing
the tools.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

from child_env import TESTS_DIR, child_env

SCRIPT = os.path.join(os.path.dirname(TESTS_DIR), "scripts", "import_graph.py")


@pytest.fixture(scope="module")
def graph_tool():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_installed_packages_respect_the_layers(graph_tool):
    graph = graph_tool.build_graph()
    assert "myxtts_ops.ops" in graph and "myxtts_ops.tools.cli" in graph
    assert graph_tool.violations(graph) == []
    # The tools really are on top: they use the op and the loss side.
    assert {("tools", "op"), ("tools", "loss")} <= graph_tool.layer_edges(graph)
    # The CLI and the demo do not import each other both ways.
    assert "myxtts_ops.tools.cli" not in graph["myxtts_ops.tools.demo"]


def test_layers(graph_tool):
    layer = graph_tool.layer_of
    assert layer("myxtts_ops") == layer("myxtts_ops.ops") == layer("myxtts_ops.gpu") == "op"
    assert layer("myxtts") == layer("myxtts.training.losses") == "loss"
    assert layer("myxtts_loss") == layer("myxtts_loss.rule") == "loss"
    assert layer("myxtts_ops.tools") == layer("myxtts_ops.tools.cli") == "tools"
    assert layer("myxtts_ops.__main__") == "tools"


def test_checker_finds_function_level_imports_and_violations(graph_tool, tmp_path):
    src = tmp_path / "mod.py"
    src.write_text(
        "import numpy\n"
        "def f():\n"
        "    from myxtts_loss import XTTSLoss\n"
        "    import importlib\n"
        "    importlib.import_module('myxtts_ops.tools.cli')\n"
        "from . import state\n"
    )
    known = {"myxtts_ops.state", "myxtts_ops.tools.cli", "myxtts_loss"}
    found = graph_tool.imports_of("myxtts_ops.ops", str(src), known)
    assert found == {"myxtts_loss", "myxtts_ops.tools.cli", "myxtts_ops.state"}
    graph = {"myxtts_ops.ops": found, "myxtts_ops.state": {"myxtts_ops.ops"}}
    problems = graph_tool.violations(graph)
    assert any(p.startswith("import cycle:") for p in problems), problems
    assert "op module myxtts_ops.ops imports loss module myxtts_loss" in problems
    assert "op module myxtts_ops.ops imports tools module myxtts_ops.tools.cli" in problems
    graph = {"myxtts.training.losses": {"myxtts_ops.tools.profiler"}}
    assert graph_tool.violations(graph) == [
        "loss module myxtts.training.losses imports tools module myxtts_ops.tools.profiler"
    ]


def test_script_exits_0_on_the_installed_tree():
    proc = subprocess.run(
        [sys.executable, SCRIPT],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=TESTS_DIR,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "import graph: OK" in proc.stdout
