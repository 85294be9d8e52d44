"""What a robot runs imports nothing of training: no torch, no trainer module.

The robot's modules are the engine (ONNX Runtime + numpy), the safety logic and the ROS
nodes that carry them; training is torch. The rule is read from the source (every import,
a function's own included) and checked by importing the robot's modules where torch cannot
be imported."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "algd_runtime"

ROBOT = ["runtime", "control", "monitor", "safety", "adapters", "signing", "atomic", "yamlfile", "data",
         "ros_nodes.controller_node", "ros_nodes.monitor_node", "ros_nodes.messages", "ros_nodes.managed",
         "ros_nodes.params", "ros_nodes.realtime", "ros_nodes.entry", "ros_nodes.recorder", "ros_nodes.operator",
         "ros_nodes.launcher", "ros_nodes.reset_cli"]
TRAINING = ["algd", "trainer", "diffusion", "networks", "fastpath", "replay", "checkpoint", "guard", "finetune",
            "reference", "precision", "config", "progress", "ros_nodes.ros_env", "ros_nodes.logdata"]
# Neither: the simulated tasks (and the sim robot's node), the exporter, the tools and the CLI.
OTHER = ["sim", "ros_nodes.sim_node", "export", "cli", "bench", "chaos", "demo", "diagnose", "faults", "guidance", "machine",
         "plots", "sweep", "baseline"]


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
    training = {f"algd_runtime.{t}" for t in TRAINING}
    assert not found & training, f"algd_runtime.{module} imports {sorted(found & training)}"


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
