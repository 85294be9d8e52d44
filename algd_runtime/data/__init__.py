"""What ships inside the package (package data, one copy; the repository's configs/,
config/io/ and launch/controller.yaml are links to these): the task configs, the io
examples and the nodes' parameter file. A wheel install finds them here as a checkout does."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent


def task_config(task: str) -> Path | None:
    """The shipped config of a task (configs/<task>.yaml), if there is one."""
    path = DATA / "configs" / f"{task}.yaml"
    return path if path.is_file() else None


def io_example(name: str) -> Path:
    """A shipped io file (config/io/<name>.yaml)."""
    return DATA / "io" / f"{name}.yaml"


def node_parameters() -> Path:
    """The graph's parameter file (launch/controller.yaml): every node's defaults, stated."""
    return DATA / "controller.yaml"
