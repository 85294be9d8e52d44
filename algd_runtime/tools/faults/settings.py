"""The fault bench's settings: the faults, the rates, the task that costs at every step, the
times each fault is held to, and the io file of a cell (its rate and step cost)."""

from __future__ import annotations

import re
from pathlib import Path


FAULTS = ("none", "kill_monitor", "late_monitor", "restart_monitor", "sigstop_monitor", "kill_controller",
          "sigstop_controller", "hostile", "duplicate_controller")
# With an io file (standard messages), the robot's own faults too; hostile and
# duplicate_controller are the raw contract's (forged episode events, our action topic).
IO_FAULTS = ("none", "kill_monitor", "late_monitor", "restart_monitor", "sigstop_monitor", "kill_controller",
             "sigstop_controller", "cost_drop", "cost_late", "episode_lost", "robot_first")
# Faults that leave the robot without a controller for a while (its command timeout holds it).
CONTROLLER_GONE = ("kill_controller", "sigstop_controller")
IO_ROBOT_FAULTS = {"cost_drop": {"io_cost_drop": 0.1}, "cost_late": {"io_cost_late": 0.3},
                   "episode_lost": {"io_episode_drop": 0.1}}
# An expiring command's expiry in these runs: 2 periods, and never under 10 ms. At 500 Hz a
# 4 ms expiry beside a CPU-bound process let most commands expire before the robot read them:
# the robot stood, no episode ran, and the cell proved nothing. The margin follows the expiry.
IO_LEASE_STEPS = 2
IO_LEASE_MIN_S = 0.010
RATE_VARIANTS = ("none@100", "none@1000")  # the baseline at other control rates
DEFAULT_RATES = (500.0,)

TASK = "PointHazard-v0"
HAZARD_SCALE = 10.0  # the hazard covers the arena: every step costs 1
CMD_TIMEOUT_S = 0.2  # the sim's command timeout in these runs
SCHED_ALLOWANCE_S = 0.03  # scheduling allowance on top of deadline + one control period
MONITOR_LATE_S = 3.0
SIGSTOP_S = 2.0
WARMUP_TIMEOUT_S = 60.0
# Holds that are the budget's (the controller's or the monitor's) or the start's, not a fault's.
BUDGET_HOLDS = ("stop: budget", "stop: monitor at STOP: budget", "estop", "no_command",
                "stop: no heartbeat from the monitor yet")
QUIET_S = 0.5  # no step for this long: the robot is not moving
REVIVE_AFTER_S = 2.5  # no episode for this long without a fault: look at why (discovery or a latch)
# Decisions that only wait for DDS discovery: more time, never a revival.
DISCOVERY_WAITS = ("no heartbeat from the monitor yet", "does not see the robot", "starting: ", "does not hear",
                   "no cost message from the robot yet")


def io_step_cost(rate: float, per_second: float = 100.0) -> float:
    """A step's cost in the hazard when the robot speaks standard messages: 1 per 10 ms
    (`per_second`), whatever the rate (a stop over standard messages takes some steps to land)."""
    return per_second / rate


def io_lease_s(rate: float) -> float:
    """An expiring command's expiry in the fault bench at `rate`."""
    return max(IO_LEASE_STEPS / rate, IO_LEASE_MIN_S)


def io_for_rate(io: Path, rate: float, workdir: Path) -> Path:
    """The io file with the robot's rate set to the run's (and an expiring command's expiry
    to io_lease_s), written beside the run."""
    import yaml

    cfg = yaml.safe_load(io.read_text())
    cfg["rate_hz"] = rate
    if isinstance(cfg.get("action"), dict) and "expires_after_s" in cfg["action"]:
        cfg["action"]["expires_after_s"] = io_lease_s(rate)
        cfg.pop("steps_ahead", None)
    out = workdir / "io.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out
LOG_FORMAT = "[{severity}] [{time}] [{name}]: {message}"
LOG_LINE = re.compile(r"^\[(\w+)\] \[(\d+(?:\.\d+)?)\] \[[^\]]*\]: (.*)$")
