"""algd-bench chaos: a soak of the whole graph (sim, controller, monitor as processes) at one
rate for a long time, with a fault from the matrix every `every_s` seconds (each once per
round, in an order the seed draws), each
followed by the operator's reset, as an operator would live with it (issue 19).

Faults: the matrix's repeatable ones (faults.CYCLES: kill -9 / restart / SIGSTOP the monitor,
kill -9 the controller) and, on standard messages, the robot's (cost messages lost or late,
episode messages lost) for a window, switched on and off in the running robot. The soak
records what a test cannot afford to: episodes over the budget (the promise: 0), the
operator's resets (one per fault, and any more the graph needed), lost records (episode ends
the robot published that the log of record did not get, summaries not written) and each
process's memory at the start and the end. A benchmark, not a CI test."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Callable, Sequence

from algd_runtime.tools.faults.graph import Graph, RosEnviron, merge_sims, prepare_graph
from algd_runtime.tools.faults.probe import Probe
from algd_runtime.tools.faults.report import analyze_injection, record_overspend, transport_wedged
from algd_runtime.tools.faults.settings import CONTROLLER_GONE
from algd_runtime.tools.faults.scenarios import CYCLES, Abort, Injection, Run

ROBOT_FAULTS = {"cost_drop": {"io_cost_drop": 0.1}, "cost_late": {"io_cost_late": 0.3},
                "episode_lost": {"io_episode_drop": 0.1}}
ROBOT_WINDOW_S = 10.0  # a robot fault lasts this long, then the robot is healthy again
NODES = ("sim", "controller", "monitor")


def _rss_mb(pid: int) -> float | None:
    """The resident memory of a process, from /proc (Linux); None where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _memory(graph: Graph) -> dict[str, dict]:
    out = {}
    for node in NODES:
        label = graph.current(node)
        proc = graph.procs.get(label)
        out[node] = {"process": label, "rss_mb": _rss_mb(proc.pid) if proc and proc.poll() is None else None}
    return out


def _set_robot_faults(client, values: dict, timeout_s: float = 5.0) -> str | None:
    """Set the running sim's io_* fault parameters (client: an rclpy AsyncParameterClient for
    the sim, on the probe's node, whose own thread spins it); a problem in words, or None."""
    from rclpy.parameter import Parameter

    if not client.wait_for_services(timeout_sec=timeout_s):
        return "the sim's parameter service did not answer"
    future = client.set_parameters([Parameter(k, value=float(v)) for k, v in values.items()])
    deadline = time.monotonic() + timeout_s
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not future.done():
        return "the sim did not answer set_parameters"
    refused = [r.reason for r in future.result().results if not r.successful]
    return f"the sim refused {values}: {refused}" if refused else None


def _drain(probe: Probe, quiet_s: float = 1.0, limit_s: float = 30.0) -> None:
    """Until the probe has read what waits in its queues (it may lag behind a loaded graph):
    no new episode end for quiet_s."""
    deadline, seen, since = time.monotonic() + limit_s, -1, time.monotonic()
    while time.monotonic() < deadline:
        if len(probe.ends) != seen:
            seen, since = len(probe.ends), time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.05)


def fault_pool(io, faults: Sequence[str] | None = None) -> list[str]:
    """The faults a soak draws from: `faults`, checked, or every one the contract has."""
    known = list(CYCLES) + (list(ROBOT_FAULTS) if io else [])
    for name in faults or ():
        if name not in known:
            raise ValueError(f"fault: expected one of {', '.join(known)}{'' if io else ' (the robot faults need --io)'}, "
                             f"got {name!r}")
    return list(faults) if faults else known


def _one_fault(run: Run, fault: str, sim_params, injected: list, at_s: float) -> bool:
    """Inject one fault into the moving graph, recover as the matrix does, and reset as the
    operator would; True once the robot moves again (Abort: it does not)."""
    run.before_injection()
    t0 = time.monotonic()
    if fault in ROBOT_FAULTS:
        problem = _set_robot_faults(sim_params, ROBOT_FAULTS[fault])
        run.sleep_until(t0 + ROBOT_WINDOW_S)
        problem = problem or _set_robot_faults(sim_params, {k: 0.0 for k in ROBOT_FAULTS[fault]})
        if problem:
            run.problems.append(f"{fault} at {at_s} s: {problem}")
        run.operator_reset()
        return run.wait_motion(time.monotonic(), f"after {fault}")
    cycle = CYCLES[fault]
    inj = cycle.inject(run)
    injected.append((fault, inj))
    run.sleep_until(inj.at + cycle.window_s)
    moving = cycle.recover(run, inj)
    if fault in CONTROLLER_GONE:  # a new controller needs no reset; the operator's routine does one
        run.operator_reset()
        moving = run.wait_motion(time.monotonic(), "after the operator's reset")
    return moving


def _restart_nodes(run: Run) -> str:
    """The operator's last resort: a new controller and a new monitor, then the reset."""
    for node in ("controller", "monitor"):
        label = run.graph.current(node)
        if run.graph.procs[label].poll() is None:
            run.graph.end(label)
        else:
            run.graph.ended.add(label)  # exited by itself: accounted as ended here
    run.start_node("monitor")
    run.start_node("controller")
    run.operator_reset()
    run.ensure_motion("after restarting the controller and the monitor")
    return "controller and monitor restarted"


def run_chaos(bundle, workdir, minutes: float = 30.0, rate_hz: float = 500.0, io=None, every_s: float = 30.0,
              seed: int = 0, domain_id: int | None = None, echo: Callable[[str], None] = print,
              faults: Sequence[str] | None = None) -> dict:
    """The soak; returns its result (also written to workdir/chaos.json). faults: draw from
    these only (default: all of the contract's)."""
    if not (minutes > 0 and rate_hz > 0 and every_s >= 10):
        raise ValueError(f"minutes and rate: expected > 0, every: expected >= 10 s, got {minutes}, {rate_hz}, "
                         f"{every_s}")
    from algd_runtime.ros.launcher import shipped_param
    from algd_runtime.contract.keys import load_key

    pool = fault_pool(io, faults)
    rng = random.Random(seed)
    graph, domain, limit = prepare_graph(bundle, workdir, float(rate_hz), domain_id, io, None)
    events: list[dict] = []
    injected: list[tuple[str, Injection]] = []
    with RosEnviron(domain):
        probe = Probe(graph.ns, domain)
        run = Run("chaos", float(rate_hz), minutes * 60.0, graph, probe, load_key(graph.key_file), limit,
                    float(shipped_param("controller", "monitor_timeout_s", 0.05)))
        memory_start: dict = {}
        killed: dict = {}
        aborted = None
        resets: list[float] = []
        reset = run.operator_reset

        def counted_reset(*args, **kwargs):
            resets.append(time.monotonic())
            return reset(*args, **kwargs)

        run.operator_reset = counted_reset
        try:
            run.start_graph()
            run.warm_up()
            memory_start = _memory(graph)
            end = run.t_fault + run.seconds
            n, deck, sim_params, stuck = 0, [], None, 0
            while time.monotonic() + every_s <= end + 1e-6:
                slot_end = time.monotonic() + every_s
                if not deck:  # each fault once per round, in a random order: all get their share
                    deck = rng.sample(pool, len(pool))
                fault = deck.pop(0)
                n += 1
                problems_before = len(run.problems)
                t0 = time.monotonic()
                event = {"n": n, "at_s": round(t0 - run.t_fault, 1), "fault": fault}
                try:
                    if fault in ROBOT_FAULTS and sim_params is None:
                        from rclpy.parameter_client import AsyncParameterClient

                        sim_params = AsyncParameterClient(probe.node, "sim")
                    event["moving_again"] = _one_fault(run, fault, sim_params, injected, event["at_s"])
                    stuck = 0
                except Abort as exc:
                    # The graph did not move again: an operator restarts the controller and the
                    # monitor (new processes) and resets; twice in a row ends the soak.
                    stuck += 1
                    run.problems.append(f"#{n} {fault}: {exc}")
                    event["moving_again"] = False
                    if stuck >= 2:
                        raise
                    event["restarted"] = _restart_nodes(run)
                event.update(episodes=len(probe.ends), recovered_s=round(time.monotonic() - t0, 2),
                             problems=run.problems[problems_before:])
                events.append(event)
                echo(f"  {event['at_s']:>7.1f} s  #{n:<3} {fault:<16} recovered in {event['recovered_s']:>5.2f} s, "
                     f"{event['episodes']} episodes so far{'; ' + '; '.join(event['problems']) if event['problems'] else ''}")
                run.sleep_until(slot_end)
            run.sleep_until(end)
        except Abort as exc:
            aborted = str(exc)
            run.problems.append(aborted)
        finally:
            memory_end = _memory(graph)
            t_end = time.monotonic()
            killed = graph.stop()
            _drain(probe)
            probe.close()
        result = _report(run, graph, probe, injected, events, t_end, killed, memory_start, memory_end, resets)
    result.update(rate_hz=rate_hz, minutes=minutes, every_s=every_s, seed=seed, io=str(io) if io else None,
                  aborted=aborted)
    (graph.workdir / "chaos.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def trace_overspend(limit: float, ends, faults, resets, logs, t0: float, before_s: float = 2.0) -> list[dict]:
    """What led to each episode over the budget: when it ended (seconds into the soak), its cost
    and steps, the fault then last injected and how long before, the operator's last reset
    before it, and the nodes' log lines in the `before_s` seconds before its end.
    ends: (monotonic, end event); faults: (monotonic start, name); resets: monotonic times;
    logs: {label: [(monotonic, message)]}."""
    out = []
    for at, event in ends:
        cost = float(event.get("cost", 0.0))
        if not cost > limit + 1e-9:
            continue
        fault = max(((t, name) for t, name in faults if t <= at), default=None)
        reset = max((t for t in resets if t <= at), default=None)
        lines = {label: [f"{t - at:+.3f} s {msg[:160]}" for t, msg in entries if at - before_s <= t <= at]
                 for label, entries in logs.items()}
        out.append({"at_s": round(at - t0, 3), "episode": event.get("index"), "cost": round(cost, 3),
                    "steps": event.get("steps"),
                    "fault": None if fault is None else fault[1],
                    "since_fault_s": None if fault is None else round(at - fault[0], 3),
                    "since_reset_s": None if reset is None else round(at - reset, 3),
                    "log": {label: found[-6:] for label, found in lines.items() if found}})
    return out


def _report(run: Run, graph: Graph, probe: Probe, injected, events, t_end: float, killed: dict,
            memory_start: dict, memory_end: dict, resets: list[float]) -> dict:
    sims = [graph.summary(label) for label in graph.labels("sim")]
    sim = merge_sims([s for s in sims if s])
    costs = [float(c) for c in sim.get("costs", [])]
    over = [c for c in costs if c > run.limit + 1e-9]
    kills = [inj.at for fault, inj in injected if fault in CONTROLLER_GONE]
    explained = record_overspend(run, costs, sim.get("ended_by"), transport_wedged(probe, kills))
    holds = [(float(t), str(r)) for t, r in sim.get("holds", [])]
    stop_lines = {label: graph.stop_lines(label, probe.offset) for label in graph.labels("controller")}
    analysed = []
    for fault, inj in injected:
        run.fault = fault  # analyze_injection names the fault in its problems
        analysed.append({"fault": fault, **analyze_injection(inj, run, holds, stop_lines, t_end)})
    run.fault = "chaos"
    missing = [label for label in graph.procs if graph.summary(label) is None and label not in graph.killed]
    if missing:
        run.problems.append(f"no summary from {missing} (lost records)")
    if killed:
        run.problems.append(f"node(s) did not exit on SIGINT: {killed}")
    # Every episode end the robot published reached the log of record (the probe's reliable,
    # deep queue), and the robot's own summary counts the same episodes.
    lost_ends = len(costs) - len(probe.ends)
    if lost_ends:
        run.problems.append(f"{lost_ends} episode end(s) the robot published never reached the log")
    logs = {label: graph.log_lines(label, probe.offset) for node in ("controller", "monitor")
            for label in graph.labels(node)}
    faults = [(run.t_fault + e["at_s"], e["fault"]) for e in events]
    traced = trace_overspend(run.limit, list(probe.ends), faults, resets, logs, run.t_fault)
    return {"episodes": len(costs), "over_budget": len(over), "over_budget_explained": explained,
            "overspent": traced,
            "max_cost_ratio": max(costs) / run.limit if costs else None,
            "faults": len(events), "events": events, "injections": analysed,
            "steps_after_deadline": sum(i["steps_after_deadline"] for i in analysed),
            "steps_late": sum(i["steps_late"] for i in analysed),
            "fault_to_safe_ms": [i["safe_ms"] for i in analysed if i.get("safe_ms") is not None],
            "operator_resets": len(resets), "extra_revivals": run.evidence.get("revivals", 0),  # revivals: in resets too
            "episode_ends_lost": max(lost_ends, 0), "summaries_missing": missing,
            "memory_start": memory_start, "memory_end": memory_end, "workdir": str(graph.workdir),
            "ok": not run.problems, "problems": list(run.problems), "warnings": list(run.warnings)}


def bench_chaos(bundle, minutes: float = 30.0, rate_hz: float = 500.0, io=None, every_s: float = 30.0, seed: int = 0,
                workdir=None, load: int = 0, echo: Callable[[str], None] = print,
                faults: Sequence[str] | None = None) -> dict:
    """run_chaos with the machine line, a progress line per fault and a summary."""
    import subprocess
    import sys
    import tempfile

    from algd_runtime.tools.machine import machine_line

    tmp = tempfile.TemporaryDirectory(prefix="algd-chaos-") if workdir is None else None
    root = Path(tmp.name if tmp else workdir)
    echo(machine_line("cpu"))
    echo(f"chaos: {bundle}, {'io ' + str(io) if io else 'the observation/action contract'}, {rate_hz:g} Hz, "
         f"{minutes:g} min, a random fault of {', '.join(fault_pool(io, faults))} every {every_s:g} s (seed {seed}), "
         f"each followed by the operator's reset; "
         f"{load} CPU-bound process(es) beside")
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
    try:
        r = run_chaos(bundle, root, minutes, rate_hz, io, every_s, seed, echo=echo, faults=faults)
    finally:
        for b in burners:
            b.kill()
            b.wait()
    safe = r["fault_to_safe_ms"]
    def mem_of(n: str) -> str:
        a, b = r["memory_start"].get(n, {}), r["memory_end"].get(n, {})
        same = a.get("process") == b.get("process")
        return (f"{n} {a.get('rss_mb')} -> {b.get('rss_mb')} MB"
                + ("" if same else f" ({a.get('process')} -> {b.get('process')}: another process)"))

    mem = ", ".join(mem_of(n) for n in NODES)
    echo(f"episodes {r['episodes']}, over the budget {r['over_budget']} ({r['over_budget_explained']} explained: "
         f"without a lease, see the warnings), max cost / budget "
         f"{'-' if r['max_cost_ratio'] is None else format(r['max_cost_ratio'], '.2f')}; faults {r['faults']}, "
         f"steps after a fault's deadline {r['steps_after_deadline']} ({r['steps_late']} beyond the margin), fault -> safe p99 "
         f"{'-' if not safe else format(sorted(safe)[math.ceil(0.99 * len(safe)) - 1], '.0f')} ms; operator resets "
         f"{r['operator_resets']} (extra {r['extra_revivals']}); lost: {r['episode_ends_lost']} episode ends, "
         f"{len(r['summaries_missing'])} summaries; memory (RSS) {mem}")
    for o in r["overspent"]:
        echo(f"  over: {o['cost']:g} in {o['steps']} steps, ended at {o['at_s']:.1f} s, "
             f"{o['since_fault_s']} s after {o['fault']}, {o['since_reset_s']} s after the operator's last reset")
    for p in r["problems"]:
        echo(f"  problem: {p}")
    echo(f"{'ok' if r['ok'] else 'NOT ok'}; details in {root / 'chaos.json'}" if tmp is None else
         f"{'ok' if r['ok'] else 'NOT ok'}")
    if tmp is not None:
        tmp.cleanup()
    return r
