"""One cell of the fault matrix (run_fault) and the whole matrix (algd-bench safety): what
the run showed against what safety means: no episode over the budget, no step after a
fault's deadline, not vacuous."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from algd_runtime.tools.faults.graph import RosEnviron, judge_overspend, merge_sims, prepare_graph
from algd_runtime.tools.faults.probe import Probe
from algd_runtime.tools.faults.scenarios import RUNNERS, Abort, Injection, Run
from algd_runtime.tools.faults.settings import (
    BUDGET_HOLDS, CONTROLLER_GONE, DEFAULT_RATES, FAULTS, HAZARD_SCALE, IO_FAULTS, IO_ROBOT_FAULTS, QUIET_S, RATE_VARIANTS,
    SCHED_ALLOWANCE_S)


def analyze_injection(inj: Injection, run: Run, holds: list, stop_lines: dict, end: float) -> dict:
    until = inj.until if inj.until is not None else end
    steps = list(run.probe.steps)
    cands = []
    hold = next(((t, r) for t, r in holds if inj.at <= t <= until and any(k in r for k in inj.reasons)), None)
    if hold:
        cands.append((hold[0], f"sim hold ({hold[1][:60]})"))
    firsts = [next(((t, r) for t, r in stop_lines.get(label, [])
                    if inj.at - inj.early_s <= t <= until and any(k in r for k in inj.reasons)), None)
              for label in inj.log_labels]
    if any(firsts):
        t, r = min(f for f in firsts if f)
        cands.append((max(t, inj.at), f"controller stop ({r[:60]})"))
    last_step = max((s for s in steps if s <= inj.at), default=-math.inf)
    last_hold = max((t for t, _ in holds if t <= inj.at), default=-math.inf)
    after = [s for s in steps if inj.at < s <= until]
    if last_hold > last_step and not after:
        cands.append((inj.at, "already holding; never stepped again"))
    elif not cands and after and until - max(after) >= QUIET_S:
        # No new hold began (the robot was between holds), but it stopped stepping: it is
        # safe from its last step on.
        cands.append((max(after), "the robot's last step; it never stepped again"))
    out = {"at_s": round(inj.at - run.t_fault, 3) if run.t_fault else None, "episodes_before": inj.episodes_before,
           "deadline_ms": (inj.deadline_s + run.period + SCHED_ALLOWANCE_S) * 1e3, "recovered": inj.until is not None,
           "steps_after_fault": sum(1 for s in steps if inj.at < s <= until)}
    # The pass rule is what safety means: no step after the fault's deadline (the time the
    # layer is allowed to take to hold the robot), whatever hold (or none) the log shows.
    # Which hold it was, and how soon, is a figure (safe_ms), not the rule.
    slack = run.period + SCHED_ALLOWANCE_S  # a step already leased may still land
    deadline_at = inj.at + inj.deadline_s + slack
    after_deadline = sum(1 for s in steps if deadline_at < s <= until)
    # Without a lease the robot steps on its last command until the stop lands; the budget's
    # margin keeps the io file's steps_ahead for those steps (SAFETY.md): they are allowed, no more.
    moved = max(0, after_deadline - run.steps_on_old_command)
    safe_at, source = min(cands) if cands else (None, "none")
    out.update(safe_ms=None if safe_at is None else (safe_at - inj.at) * 1e3, source=source,
               steps_after_deadline=after_deadline, steps_late=moved)
    # A second controller is safe while it never commands: the running one may keep driving
    # until discovery shows it the other (both latch then; _finish checks that).
    if moved and run.fault != "duplicate_controller":
        allowed = f" and the {run.steps_on_old_command} its margin keeps" if run.steps_on_old_command else ""
        run.problems.append(f"{run.fault}: the robot took {moved} steps after the fault's deadline{allowed} "
                            f"({(deadline_at - inj.at) * 1e3:.0f} ms after the fault injected at {out['at_s']} s)")
    if inj.episodes_before < 1:
        run.problems.append(f"{run.fault}: no episode ran before the fault at {out['at_s']} s (vacuous)")
    return out


def record_overspend(run: Run, costs: list[float], ended_by: list[str] | None, wedged: bool) -> int:
    """Judge the episodes over the budget (judge_overspend): those not explained are a
    problem of the run, the explained ones a warning; returns how many were explained."""
    over = sum(1 for c in costs if c > run.limit + 1e-9)
    explained, note = judge_overspend(run.graph, costs, run.limit, ended_by, wedged)
    if over > explained:
        run.problems.append(f"{over - explained} episode(s) over the budget {run.limit:g}, not explained: max cost "
                            f"{max(costs):g}" + (f" ({note})" if note else ""))
    elif note:
        run.warnings.append(note)
    return explained


def _finish(run: Run, end: float, killed: dict) -> dict:
    g, probe = run.graph, run.probe
    sims = {label: g.summary(label) for label in g.labels("sim")}
    sim = merge_sims([s for s in sims.values() if s])
    ctl = {label: g.summary(label) for label in g.labels("controller")}
    mon = {label: g.summary(label) for label in g.labels("monitor")}
    for label, s in list(ctl.items()) + list(mon.items()) + list(sims.items()):
        if s is None and label not in g.killed:
            run.problems.append(f"no summary from {label} (see {g.workdir}/{label}.log)")
    if killed:
        run.problems.append(f"node(s) did not exit on SIGINT: {killed}")
    costs = [float(c) for c in sim.get("costs", [])]
    over = sum(1 for c in costs if c > run.limit + 1e-9)
    live_over = {ep: c for ep, c in probe.episode_cost.items() if c > run.limit + 1e-9}
    kills = [inj.at for inj in run.injections] if run.fault in CONTROLLER_GONE else []
    explained = record_overspend(run, costs, sim.get("ended_by"), transport_wedged(probe, kills))
    if live_over and not over:
        run.problems.append(f"episode(s) over the budget while running (unfinished at exit?): {live_over}")
    holds = [(float(t), str(r)) for t, r in sim.get("holds", [])]
    stop_lines = {label: g.stop_lines(label, probe.offset) for label in ctl}
    injections = [analyze_injection(inj, run, holds, stop_lines, end) for inj in run.injections]
    safe = [i["safe_ms"] for i in injections if i.get("safe_ms") is not None]
    p50 = float(np.percentile(safe, 50)) if safe else None
    p99 = float(np.percentile(safe, 99)) if safe else None
    deadline_ms = max((i["deadline_ms"] for i in injections), default=None)
    # A timing target, not a safety expectation: a late stop still held the budget (`over`).
    late = p99 is not None and p99 > deadline_ms
    ticks = sum(int(s.get("ticks", 0)) for s in ctl.values() if s)
    fallbacks = sum(int(s.get("fallbacks", 0)) for s in ctl.values() if s)
    latched = {label: (s or {}).get("latched") for label, s in ctl.items()}
    seen = set()
    for label, lines in stop_lines.items():
        for t, r in lines:
            if run.t_fault is None or t >= run.t_fault:
                for part in r.split("; "):
                    seen.add(part.split(":", 1)[0])
    for kind in run.expect_latch:
        if kind not in seen:
            run.problems.append(f"{run.fault}: the controller never stopped for {kind!r} (seen: {sorted(seen)})")
    if run.fault == "duplicate_controller":
        for label in ("controller", "controller_2"):
            if "duplicate_controller" not in ((ctl.get(label) or {}).get("latched") or {}):
                run.problems.append(f"duplicate_controller: {label} did not latch duplicate_controller "
                                    f"(latched: {latched.get(label)})")
        # The monitor's own check (two commanders' interleaving commands, read at the robot's
        # steps) fires only while the robot still steps: where the controllers saw each other
        # at once, the robot held first, and the monitor had nothing to read. Not required here.
    elif any(str(t.get("reason", "")).startswith("duplicate_controller")
             for s in mon.values() if s for t in s.get("transitions", [])):
        run.problems.append(f"{run.fault}: the monitor saw two commanders where there was one")
    if run.fault in ("kill_monitor", "hostile") and run.injections and run.injections[-1].until is None:
        final = (ctl.get(run.graph.current("controller")) or {}).get("latched") or {}
        if "monitor_lost" not in final:
            run.problems.append(f"{run.fault}: the controller is not latched monitor_lost at the end ({final})")
    if run.fault in ("none", "late_monitor"):
        # No fault injected: a latch or a fault's hold is the controller's own doing (a heartbeat
        # late under load): safe, but the robot stopped; a warning, not a failed expectation.
        bad = {label: v for label, v in latched.items() if v}
        if bad:
            run.warnings.append(f"{run.fault}: latched without an injected fault: {bad}")
        faulty = sorted({r for _, r in holds if not r.startswith(BUDGET_HOLDS)})
        if faulty:
            run.warnings.append(f"{run.fault}: holds without an injected fault: {faulty[:5]}")
    if run.episodes_before_fault is None:
        run.episodes_before_fault = injections[0]["episodes_before"] if injections else None
    if run.fault not in ("late_monitor",) and not (run.episodes_before_fault or 0) >= 1:
        run.problems.append(f"{run.fault}: no episode before the fault (vacuous)")
    if not costs:
        run.problems.append(f"{run.fault}: no episode ended (vacuous)")
    if probe.errors:
        run.problems.append(f"probe errors: {probe.errors[:3]}")
    ended_by: dict[str, int] = {}
    for r in sim.get("ended_by", []):
        k = r.split(":")[0] if r.startswith("stop") else r
        k = r[:40] if k == "stop" else k
        ended_by[k] = ended_by.get(k, 0) + 1
    return {
        "fault": run.fault, "rate_hz": run.rate, "seconds": run.seconds, "namespace": g.ns,
        "workdir": str(g.workdir), "episodes": len(costs), "over_budget": over, "over_budget_explained": explained,
        "limit": run.limit,
        "max_cost": max(costs) if costs else None,
        "max_cost_ratio": max(costs) / run.limit if costs else None, "costs": costs,
        "episodes_before_fault": run.episodes_before_fault, "injections": injections,
        "fault_to_safe_ms": safe, "fault_to_safe_p50_ms": p50, "fault_to_safe_p99_ms": p99,
        "deadline_ms": deadline_ms, "sched_allowance_ms": SCHED_ALLOWANCE_S * 1e3,
        "ticks": ticks, "fallbacks": fallbacks, "fallback_pct": 100.0 * fallbacks / ticks if ticks else None,
        "steps": sim.get("steps"), "probe_steps": len(probe.steps), "lease_waits": sim.get("lease_waits"),
        "holds": len(holds), "ended_by": ended_by, "latched": latched,
        "monitor_level": {label: (s or {}).get("level") for label, s in mon.items()},
        "stop_kinds_seen": sorted(seen), "evidence": run.evidence,
        "heartbeat_max_gap_ms": _max_gap_ms(probe, run.t_fault, end),
        "ok": not run.problems, "target_met": not late, "problems": list(run.problems), "warnings": list(run.warnings),
    }


def transport_wedged(probe: Probe, kills: Sequence[float], within_s: float = 1.5, gap_s: float = 0.5) -> bool:
    """Whether the monitor's heartbeats stopped for gap_s or more within within_s of a
    controller's SIGKILL. Fast DDS's shared-memory transport (which rmw_fastrtps always
    configures for ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST): a process killed while it writes
    into a peer's port leaves that port locked until the port's health check repairs it (1 s
    by default); every writer to the peer blocks in publish meanwhile (py-spy: Port::try_push
    -> interprocess_mutex::lock), the monitor's e-stop to the robot included."""
    hb = [(t, boot) for t, boot, *_ in list(probe.heartbeats)]
    for at in kills:
        for (ta, ba), (tb, bb) in zip(hb, hb[1:]):
            if ba == bb and at - 0.1 <= ta <= at + within_s and tb - ta >= gap_s:
                return True
    return False


def _max_gap_ms(probe: Probe, t0: float | None, t1: float) -> float | None:
    """The longest silence between two heartbeats of one monitor process, as the probe heard them."""
    gaps = []
    hb = [(t, boot) for t, boot, *_ in list(probe.heartbeats) if t0 is None or t >= t0]
    for (ta, ba), (tb, bb) in zip(hb, hb[1:]):
        if ba == bb and tb <= t1:
            gaps.append(tb - ta)
    return max(gaps) * 1e3 if gaps else None


def run_fault(fault: str, rate_hz: float, seconds: float, bundle, workdir, domain_id: int | None = None,
              io=None) -> dict:
    """One fault at one control rate: the three nodes as processes, the fault, the numbers.
    The result has `ok` and `problems` (each failed expectation, in words). io: an io file:
    the graph speaks standard messages (its rate_hz, and an expiring command's expiry of
    2 periods and at least 10 ms: settings.io_lease_s)."""
    names = IO_FAULTS if io else FAULTS
    if fault not in names:
        raise ValueError(f"fault: expected one of {', '.join(names)}{' (with --io)' if io else ''}, got {fault!r}")
    if not (rate_hz > 0 and seconds > 0):
        raise ValueError(f"rate_hz and seconds: expected values > 0, got {rate_hz}, {seconds}")
    from algd_runtime.ros.launcher import shipped_param
    from algd_runtime.contract.keys import load_key

    graph, domain, limit = prepare_graph(bundle, workdir, float(rate_hz), domain_id, io, IO_ROBOT_FAULTS.get(fault),
                                         monitor_latch="operator" if fault == "hostile" else "episode")
    workdir = graph.workdir
    with RosEnviron(domain):
        probe = Probe(graph.ns, domain)
        run = Run(fault, float(rate_hz), float(seconds), graph, probe, load_key(graph.key_file), limit,
                  float(shipped_param("controller", "monitor_timeout_s", 0.05)))
        killed: dict = {}
        try:
            if fault not in ("late_monitor", "robot_first"):
                run.start_graph()
            RUNNERS[fault](run)
        except Abort as exc:
            run.problems.append(str(exc))
        finally:
            end = time.monotonic()
            killed = graph.stop()
            time.sleep(0.2)  # the last messages reach the probe
            probe.close()
        result = _finish(run, end, killed)
    (workdir / "result.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def _cells(faults: Sequence[str] | None, rates: Sequence[float] | None, io=None) -> list[tuple[str, float]]:
    """'name' runs at each of `rates`; 'name@rate' at that rate only. With an io file the
    default is every io fault at 100, 500 and 1000 Hz."""
    names = IO_FAULTS if io else FAULTS
    rates = [float(r) for r in (rates or ((100.0, 500.0, 1000.0) if io else DEFAULT_RATES))]
    specs = list(faults) if faults else list(names) + ([] if io else list(RATE_VARIANTS))
    cells = []
    for spec in specs:
        name, _, at = spec.partition("@")
        if name not in names:
            raise ValueError(f"fault: expected one of {', '.join(names)} (optionally @rate), got {spec!r}")
        for rate in ([float(at)] if at else rates):
            if (name, rate) not in cells:
                cells.append((name, rate))
    return cells


def _ms(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def bench_safety(bundle, faults: Sequence[str] | None = None, rates: Sequence[float] | None = None,
                 seconds: float = 8.0, echo: Callable[[str], None] = print, workdir=None,
                 domain_id: int | None = None, io=None, load: int = 0) -> list[dict]:
    """Every fault (default: all, at 500 Hz, plus the baseline at 100 and 1000 Hz) as one
    run each; prints a table and returns the results (run_fault's dicts)."""
    import tempfile

    cells = _cells(faults, rates, io)
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="algd-faults-")
        workdir = tmp.name
    root = Path(workdir)
    from algd_runtime.tools.machine import machine_line

    echo(machine_line("cpu"))
    cost = "1 per 10 ms (a step at rate R costs 100 / R)" if io else "1"
    echo(f"bundle: {bundle}; controller, monitor and sim as processes{', io ' + str(io) if io else ''}, every step "
         f"costs {cost} (hazard_scale {HAZARD_SCALE:g}), {seconds:g} s after warm-up per cell; fault -> safe deadline "
         f"= mechanism + one period + {SCHED_ALLOWANCE_S * 1e3:g} ms; ok: no episode over the budget, no step after "
         f"a fault's deadline, not vacuous; {load} CPU-bound process(es) beside")
    header = (f"{'fault':<21} {'rate Hz':>7} {'episodes':>8} {'over':>4} {'max/budget':>10} {'n':>2} "
              f"{'f->safe p50':>11} {'p99 ms':>7} {'deadline':>8} {'fallback %':>10}  ok")
    echo(header)
    echo("-" * len(header))
    rows = []
    import subprocess as sp
    import sys

    burners = [sp.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
    try:
        for fault, rate in cells:
            r = run_fault(fault, rate, seconds, bundle, root / f"{fault}_{rate:g}", domain_id, io=io)
            rows.append(r)
            ratio = "-" if r["max_cost_ratio"] is None else f"{r['max_cost_ratio']:.2f}"
            fb = "-" if r["fallback_pct"] is None else f"{r['fallback_pct']:.1f}"
            over = f"{r['over_budget']}" + (f"({r['over_budget_explained']}e)" if r["over_budget_explained"] else "")
            echo(f"{fault:<21} {rate:>7g} {r['episodes']:>8} {over:>4} {ratio:>10} "
                 f"{len(r['fault_to_safe_ms']):>2} {_ms(r['fault_to_safe_p50_ms']):>11} "
                 f"{_ms(r['fault_to_safe_p99_ms']):>7} {_ms(r['deadline_ms']):>8} {fb:>10}  "
                 f"{'yes' if r['ok'] else 'NO'}{'' if r['target_met'] else ' (p99 late)'}")
            for p in r["problems"]:
                echo(f"    problem: {p}")
            if r["over_budget_explained"]:
                echo(f"    explained: {next(w for w in r['warnings'] if 'without a lease' in w)}")
    finally:
        for b in burners:
            b.kill()
            b.wait()
        if tmp is not None:
            tmp.cleanup()
    return rows
