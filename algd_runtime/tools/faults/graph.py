"""The graph under test: the controller, the monitor and the sim robot as processes in a
namespace and ROS domain of their own (launcher.node_command, the launch YAML); start, signal,
stop and read each node's summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path


from algd_runtime.tools.faults.probe import last_warnings
from algd_runtime.tools.faults.settings import (
    CMD_TIMEOUT_S, HAZARD_SCALE, LOG_FORMAT, LOG_LINE, TASK, io_for_rate, io_step_cost)

_counter = iter(range(1_000_000))


class Graph:
    """Controller, monitor and sim (and any later instance: "monitor_2", "sim_2", ...) as
    processes, each with its summary file and log in workdir."""

    def __init__(self, bundle: Path, workdir: Path, namespace: str, rate: float, env: dict, key_file: Path,
                 monitor_latch: str = "episode", io: Path | None = None, sim_extra: dict | None = None) -> None:
        from algd_runtime.ros.launcher import default_params

        self.bundle, self.workdir, self.ns, self.rate, self.env = bundle, workdir, namespace, rate, env
        self.params = default_params()
        self.key_file, self.monitor_latch = key_file, monitor_latch
        # With an io file every step in the hazard costs one per 10 ms, whatever the rate (a cost
        # per unit of time): a stop over standard messages takes some steps to land.
        self.io, self.sim_extra = io, dict(sim_extra or {})
        self.step_cost = io_step_cost(rate) if io else 1.0
        self.procs: dict[str, subprocess.Popen] = {}
        self.started: dict[str, float] = {}
        self.killed: set[str] = set()  # SIGKILLed here
        self.ended: set[str] = set()  # stopped with SIGINT here before the run's end
        self.paused: set[str] = set()  # SIGSTOPped now

    def overrides(self, node: str, label: str) -> dict:
        summary = self.workdir / f"{label}.json"
        io = {"io": self.io} if self.io else {}
        if node == "controller":
            return {"provider": "cpu", "control_rate_hz": float(self.rate), "obs_timeout_s": max(3.0 / self.rate, 0.01),
                    "operator_key_file": self.key_file, "stop_latch": "episode", "max_step_cost": self.step_cost,
                    "summary_file": summary, **io}
        if node == "monitor":
            return {"operator_key_file": self.key_file, "state_file": self.workdir / "monitor_state.json",
                    "stop_latch": self.monitor_latch, "max_step_cost": self.step_cost, "use_critic": "false",
                    "summary_file": summary, **io}
        extra = {"io_steps": "true", "cost_scale": self.step_cost, **self.sim_extra} if self.io else {}
        return {"task": TASK, "rate_hz": float(self.rate), "hazard_scale": HAZARD_SCALE, "cmd_timeout_s": CMD_TIMEOUT_S,
                "summary_file": summary, **io, **extra}

    @property
    def trigger(self) -> str | None:
        """The io file's trigger topic (the sim's state), or None for the raw contract."""
        if not self.io:
            return None
        from algd_runtime.deploy.adapters import load_io

        return load_io(str(self.io)).trigger

    def next_label(self, node: str) -> str:
        n = len(self.labels(node))
        return node if n == 0 else f"{node}_{n + 1}"

    def start(self, node: str) -> str:
        from algd_runtime.ros.launcher import node_command

        label = self.next_label(node)
        (self.workdir / f"{label}.json").unlink(missing_ok=True)
        cmd = node_command(node, self.ns, self.params, str(self.bundle) if node != "sim" else None,
                           **self.overrides(node, label))
        with open(self.workdir / f"{label}.log", "w") as log:
            self.procs[label] = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.started[label] = time.monotonic()
        return label

    def send(self, label: str, sig: int) -> None:
        self.procs[label].send_signal(sig)
        if sig == signal.SIGKILL:
            self.killed.add(label)
            self.procs[label].wait(timeout=10.0)
        elif sig == signal.SIGSTOP:
            self.paused.add(label)
        elif sig == signal.SIGCONT:
            self.paused.discard(label)

    def end(self, label: str, timeout: float = 20.0) -> None:
        """SIGINT one node (it writes its summary) and wait for it."""
        from algd_runtime.ros.launcher import stop_nodes

        self.ended.add(label)
        stop_nodes({label: self.procs[label]}, timeout=timeout)

    def current(self, node: str) -> str:
        """The newest instance of `node` that was not killed or ended here."""
        alive = [n for n in self.labels(node) if n not in self.killed and n not in self.ended]
        return alive[-1] if alive else self.labels(node)[-1]

    def dead(self) -> dict[str, int]:
        """Processes that exited on their own (not killed or ended here): {label: exit status}."""
        return {n: p.returncode for n, p in self.procs.items()
                if p.poll() is not None and n not in self.killed and n not in self.ended}

    def stop(self, timeout: float = 20.0) -> dict[str, str]:
        from algd_runtime.ros.launcher import stop_nodes

        for label in list(self.paused):
            self.send(label, signal.SIGCONT)
        return stop_nodes({n: p for n, p in self.procs.items() if n not in self.killed}, timeout=timeout)

    def summary(self, label: str) -> dict | None:
        try:
            return json.loads((self.workdir / f"{label}.json").read_text())
        except (OSError, ValueError):
            return None

    def log_lines(self, label: str, offset: float) -> list[tuple[float, str]]:
        """(monotonic time, message) of every ROS log line of a node."""
        out = []
        try:
            text = (self.workdir / f"{label}.log").read_text(errors="replace")
        except OSError:
            return out
        for line in text.splitlines():
            mt = LOG_LINE.match(line.strip())
            if mt:
                out.append((float(mt.group(2)) - offset, mt.group(3)))
        return out

    def last_warnings(self, label: str, n: int = 3) -> list[str]:
        """A node's last n warning or error lines: why it holds, when a wait times out."""
        return last_warnings(self.workdir / f"{label}.log", n)

    def stop_lines(self, label: str, offset: float) -> list[tuple[float, str]]:
        """The controller's STOP decisions from its log: (monotonic time, reason)."""
        return [(t, msg[6:]) for t, msg in self.log_lines(label, offset) if msg.startswith("STOP: ")]

    def labels(self, node: str) -> list[str]:
        return [n for n in self.procs if n == node or n.startswith(node + "_")]


def judge_overspend(graph: Graph, costs: list[float], limit: float, ended_by: list[str] | None = None,
                    wedged: bool = False) -> tuple[int, str | None]:
    """Episodes over the budget: (how many are explained, the note that says how, or None).
    With a lease none is (each is a problem). Without one the budget holds only while the
    nodes run within the measured margin and reach the robot (SAFETY.md), so an episode over
    it is explained when
    - the largest stop distance the nodes measured covers its overshoot: the stall that caused
      it was counted, the margin grew and was logged, and the robot is held to it (or, where
      that margin left no episode able to move, latched until the operator's reset); or
    - `wedged` (a killed process left the robot's shared-memory port locked: transport_wedged)
      and the robot's own command timeout ended it: no e-stop could reach it before that."""
    over = [i for i, c in enumerate(costs) if c > limit + 1e-9]
    if not over or graph.io is None:
        return 0, None
    from algd_runtime.deploy.adapters import load_io

    io = load_io(str(graph.io))
    if io.leased:
        return 0, None
    labels = graph.labels("controller") + graph.labels("monitor")
    margin = max((int((s := graph.summary(label) or {}).get("steps_ahead_largest", s.get("steps_ahead")) or 0)
                  for label in labels), default=0)
    ended_by = list(ended_by or [])
    # Only a margin the nodes grew by measuring: the configured one held nothing back here.
    measured = [i for i in over if margin > io.steps_ahead and costs[i] - limit <= margin * graph.step_cost + 1e-9]
    timed_out = [i for i in over if i not in measured and wedged and i < len(ended_by)
                 and ended_by[i] == "cmd_timeout"]
    note = (f"{len(over)} episode(s) over the budget {limit:g} without a lease (max {max(costs[i] for i in over):g}): "
            f"{len(measured)} within the largest margin the nodes measured ({margin} steps x {graph.step_cost:g}; "
            f"configured {io.steps_ahead}), "
            f"{len(timed_out)} ended by the robot's own command timeout while a killed process's shared-memory port "
            f"held every e-stop back (SAFETY.md: not bounded without a lease)")
    return len(measured) + len(timed_out), note


def merge_sims(summaries: list[dict]) -> dict:
    out: dict = {"steps": 0, "episodes": 0, "costs": [], "holds": [], "ended_by": [], "lease_waits": 0}
    for s in summaries:
        for k in ("steps", "episodes", "lease_waits"):
            out[k] += int(s.get(k, 0))
        for k in ("costs", "holds", "ended_by"):
            out[k] += list(s.get(k, []))
    out["holds"].sort(key=lambda h: h[0])
    return out


def _domain(domain_id: int | None) -> int:
    if domain_id is not None:
        return int(domain_id)
    env = os.environ.get("ROS_DOMAIN_ID")
    return int(env) if env and env.isdigit() else 80 + os.getpid() % 20


class RosEnviron:
    """This process's own ROS participants (the probe, the operator's reset) on the run's
    domain, discovery on this machine only; the previous values come back afterwards."""

    def __init__(self, domain: int) -> None:
        self.values = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_DOMAIN_ID": str(domain)}

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.values}
        os.environ.update(self.values)
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def prepare_graph(bundle, workdir, rate_hz: float, domain_id: int | None, io, sim_extra: dict | None,
                  monitor_latch: str = "episode") -> tuple[Graph, int, float]:
    """The three processes' Graph for one run in workdir (its own namespace, domain, operator
    key and monitor state), the domain, and the budget's limit from the bundle."""
    from algd_runtime.contract.bundle import read_manifest
    from algd_runtime.contract.keys import create_key

    bundle, workdir = Path(bundle), Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    budget = read_manifest(bundle).get("budget") or {}
    limit = float(budget.get("cost_limit") or 5.0)
    key_file = workdir / "operator.key"
    if not key_file.exists():
        create_key(key_file)
    (workdir / "monitor_state.json").unlink(missing_ok=True)
    domain = _domain(domain_id)
    ns = f"faults_{os.getpid()}_{next(_counter)}"
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1",
               XDG_STATE_HOME=str(workdir), RCUTILS_CONSOLE_OUTPUT_FORMAT=LOG_FORMAT, RCUTILS_COLORIZED_OUTPUT="0")
    io_file = io_for_rate(Path(io), rate_hz, workdir) if io else None
    graph = Graph(bundle, workdir, ns, rate_hz, env, key_file, monitor_latch=monitor_latch, io=io_file,
                  sim_extra=sim_extra)
    return graph, domain, limit
