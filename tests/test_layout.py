"""The layout shows the architecture (issue 22): the folder says which dependency set a file
needs, and what a robot runs imports nothing of training.

- contract/: what training and deployment agree on (bundle schema, budget, keys, files);
- learn/: training, torch;
- deploy/: the robot's engine, numpy + ONNX Runtime;
- ros/: the nodes (rclpy); the sim robot's node needs the simulator;
- tools/, sim/, export/, cli.py: run by people.

The rules are read from the source (every import, a function's own included) and checked by
importing the robot's modules where torch cannot be imported."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "algd_runtime"


def modules(folder: str) -> list[str]:
    return sorted(".".join(p.relative_to(PKG).with_suffix("").parts) for p in (PKG / folder).glob("*.py")
                  if p.name != "__init__.py")


CONTRACT, LEARN, DEPLOY = modules("contract"), modules("learn"), modules("deploy")
ROS = [m for m in modules("ros") if m != "ros.sim_node"]  # the sim robot's node needs MuJoCo
ROBOT = CONTRACT + DEPLOY + ROS + ["data"]
TRAINING = LEARN
# Neither: the simulated tasks (and the sim robot's node), the exporter, the tools and the CLI.
OTHER = ["sim", "ros.sim_node", "export", "cli", "tools"]


def source(module: str) -> Path:
    path = PKG / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imports(module: str) -> set[str]:
    """Every module that `module` imports, anywhere in its source, as dotted names."""
    out = set()
    for node in ast.walk(ast.parse(source(module).read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_every_module_is_the_robot_s_training_s_or_neither():
    """A new module takes a side here: the rules below then hold for it."""
    for module in ROBOT + TRAINING:
        assert source(module).is_file(), module
    assert not set(ROBOT) & set(TRAINING)
    listed = ROBOT + TRAINING + OTHER
    for path in PKG.rglob("*.py"):
        name = ".".join(path.relative_to(PKG).with_suffix("").parts)
        if name != "__init__" and not name.endswith(".__init__"):
            assert any(name == m or name.startswith(m + ".") for m in listed), f"{name}: robot, training or other?"


@pytest.mark.parametrize("module", ROBOT)
def test_a_robot_module_imports_no_torch_and_no_training_module(module):
    found = imports(module)
    assert not {m for m in found if m == "torch" or m.startswith("torch.")}, found
    upward = {m for m in found if m.startswith(("algd_runtime.learn", "algd_runtime.tools", "algd_runtime.export"))}
    assert not upward, f"algd_runtime.{module} imports {sorted(upward)}"


@pytest.mark.parametrize("module", CONTRACT)
def test_the_contract_imports_neither_side(module):
    """Training and deployment both read the contract; it reads neither of them."""
    sides = {m for m in imports(module) if m.startswith("algd_runtime.") and not m.startswith(
        ("algd_runtime.contract", "algd_runtime.data"))}
    assert not sides, f"algd_runtime.{module} imports {sorted(sides)}"


def test_the_folders_are_the_sketch_of_issue_22():
    """No module is left at the package root but the CLI: a new one takes a folder."""
    root = sorted(p.stem for p in PKG.glob("*.py") if p.name != "__init__.py")
    assert root == ["cli"], root
    for folder in ("contract", "learn", "deploy", "ros", "tools"):
        assert modules(folder), folder


def test_the_robot_modules_import_where_torch_cannot_be():
    code = ("import sys, importlib, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name == 'torch' or name.startswith('torch.'):\n"
            "            raise ImportError('torch is blocked in this process')\n"
            "sys.meta_path.insert(0, Block())\n"
            f"for m in {ROBOT!r}:\n"
            "    importlib.import_module('algd_runtime.' + m)\n"
            "print('imported', len(" + repr(ROBOT) + "), 'torch loaded:', 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"imported {len(ROBOT)} torch loaded: False" in out.stdout
