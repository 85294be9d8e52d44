"""algd-bench train: how fast the pieces of a training run are on this machine."""

from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np
import torch

from algd_runtime.tools.machine import BF16_FLAGS, cpu_flags, machine_line, python_speed


def _print_header(header: str) -> None:
    """A table's column line and its underline."""
    print(header)
    print("-" * len(header))


def _rate(fn: Callable[[], int], seconds: float) -> float:
    """Calls fn (which returns how many units it did) until `seconds` pass; units per second."""
    fn()  # warm-up
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        done += fn()
    return done / (time.perf_counter() - t0)


def cpu_flags_line() -> str:
    from algd_runtime.learn.precision import resolve

    have = cpu_flags()
    return (f"CPU flags: {', '.join(have) or 'none of ' + ', '.join(BF16_FLAGS)}; "
            f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}; "
            f"precision auto: {resolve('auto', torch.device('cpu'))[1]}")


def bench_train(tasks: list[str], algo, seconds: float = 5.0, device: str = "cpu") -> list[dict]:
    """algo: an AlgoConfig (network sizes, batch size) to time the gradient updates with."""
    from algd_runtime.learn.algd import ALGDAgent
    from algd_runtime.learn.replay import ReplayBuffer
    from algd_runtime.sim import make_task

    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device")
    batch = algo.batch_size
    print(machine_line(device))
    print(cpu_flags_line())
    print(f"networks: {algo.variant}, K={algo.diffusion_steps}, denoiser width {algo.score_hidden}, "
          f"critic width {algo.critic_hidden}, {algo.qc_ensemble} cost critics, N={algo.score_mc_samples}")
    header = (f"{'task':<28} {'obs':>4} {'act':>4} {'env steps/s':>12} {'act+step/s':>11} "
              f"{'eager upd/s':>11} {'fast upd/s':>10} {'fast/eager':>10} {'bf16 upd/s':>10} {'bf16/eager':>10} "
              f"{'batch':>6}")
    _print_header(header)
    rows = []
    for name in tasks:
        env = make_task(name, seed=0)
        spec = env.task_spec
        rng = np.random.default_rng(0)
        env.reset(seed=0)
        low, high = np.array(spec.act_low), np.array(spec.act_high)

        def env_steps(n: int = 200, policy=None) -> int:
            for _ in range(n):
                a = rng.uniform(low, high).astype(np.float32) if policy is None else policy()
                _, _, _, term, trunc, _ = env.step(a)
                if term or trunc:
                    env.reset()
            return n

        agent = ALGDAgent(spec, algo, device)
        obs = np.zeros(spec.obs_dim, np.float32)
        raw = _rate(env_steps, seconds)
        acting = _rate(lambda: env_steps(50, lambda: agent.act(obs)), seconds)
        replay = ReplayBuffer(10_000, spec.obs_dim, spec.act_dim)
        for _ in range(5000):
            replay.add(rng.normal(size=spec.obs_dim), rng.uniform(low, high), rng.normal(),
                       float(rng.random() < 0.1), rng.normal(size=spec.obs_dim), False)

        eager, fast, bf16 = _update_rates(spec, algo, device, lambda: replay.sample(batch, rng), seconds)
        env.close()
        row = {"task": name, "obs": spec.obs_dim, "act": spec.act_dim, "env_steps_per_s": raw,
               "act_step_per_s": acting, "updates_per_s": fast, "eager_updates_per_s": eager,
               "fast_over_eager": fast / eager, "bf16_updates_per_s": bf16, "bf16_over_eager": bf16 / eager,
               "batch": batch}
        rows.append(row)
        print(f"{name:<28} {spec.obs_dim:>4} {spec.act_dim:>4} {raw:>12.0f} {acting:>11.0f} "
              f"{eager:>11.1f} {fast:>10.1f} {fast / eager:>9.2f}x {bf16:>10.1f} {bf16 / eager:>9.2f}x "
              f"{batch:>6}", flush=True)
    print("eager and fast: fp32; bf16: the fast update with `precision: bf16` (fp32 master weights, "
          "bf16 compute)")
    return rows


def _update_rates(spec, algo, device: str, sample: Callable[[], dict], seconds: float
                  ) -> tuple[float, float, float]:
    """Gradient updates/s of the eager fp32 update (autograd for grad_a L_A), of the fast
    fp32 one and of the fast bf16 one, from the same weights, in alternating rounds so that
    all see the same machine load."""
    import dataclasses

    from algd_runtime.learn.algd import ALGDAgent

    agents = [ALGDAgent(spec, dataclasses.replace(algo, fast_update=fast, precision=precision), device)
              for fast, precision in ((False, "fp32"), (True, "fp32"), (True, "bf16"))]
    for agent in agents[1:]:
        agent.load_state_dict(agents[0].state_dict())
    done, spent = [0] * 3, [0.0] * 3
    for agent in agents:  # warm-up
        agent.update(sample())
    while sum(spent) < 3 * seconds:
        for i, agent in enumerate(agents):
            t0 = time.perf_counter()
            for _ in range(3):
                agent.update(sample())
            if device == "cuda":
                torch.cuda.synchronize()
            spent[i] += time.perf_counter() - t0
            done[i] += 3
    return done[0] / spent[0], done[1] / spent[1], done[2] / spent[2]


# -- algd-bench envs ----------------------------------------------------------------------------
def bench_envs(task: str, counts: list[int], algo, seconds: float = 5.0, asynchronous: bool = True) -> list[dict]:
    """Collection throughput with n copies of a task stepping together (gymnasium vector
    envs), with uniform random actions and with one batched policy call per vector step."""
    import functools

    from algd_runtime.learn.algd import ALGDAgent
    from algd_runtime.sim import make_task
    from algd_runtime.sim.vector import make_vector_task

    print(machine_line("cpu"))
    print(f"task {task}; {'AsyncVectorEnv (one process per copy)' if asynchronous else 'SyncVectorEnv'}; "
          f"policy: denoiser width {algo.score_hidden}, K={algo.diffusion_steps}, one batched call per step")
    header = f"{'copies':>6} {'env steps/s':>12} {'act+step/s':>11} {'act+step vs 1 copy':>19}"
    _print_header(header)
    rows: list[dict] = []
    for n in counts:
        vec = make_vector_task(functools.partial(make_task, task, seed=0), n, run_seed=0, asynchronous=asynchronous)
        try:
            obs, _ = vec.reset()
            spec_env = make_task(task, seed=0)
            agent = ALGDAgent(spec_env.task_spec, algo)
            spec_env.close()
            rng = np.random.default_rng(0)
            low, high = vec.single_action_space.low, vec.single_action_space.high
            state = {"obs": obs}

            def random_steps(k: int = 20) -> int:
                for _ in range(k):
                    state["obs"] = vec.step(rng.uniform(low, high, (n, len(low))).astype(np.float32))[0]
                return k * n

            def policy_steps(k: int = 10) -> int:
                for _ in range(k):
                    with torch.no_grad():
                        actions = agent.policy.sample(torch.as_tensor(state["obs"], dtype=torch.float32)).numpy()
                    state["obs"] = vec.step(actions)[0]
                return k * n

            raw, acting = _rate(random_steps, seconds), _rate(policy_steps, seconds)
        finally:
            vec.close()
        row = {"copies": n, "env_steps_per_s": raw, "act_step_per_s": acting}
        row["speedup"] = acting / rows[0]["act_step_per_s"] if rows else 1.0
        rows.append(row)
        print(f"{n:>6} {raw:>12.0f} {acting:>11.0f} {row['speedup']:>18.2f}x", flush=True)
    return rows


# -- algd-bench infer -------------------------------------------------------------------------
def _latency(fn: Callable[[], object], iters: int, warmup: int = 200, period_s: float = 0.0) -> dict[str, float]:
    """Microseconds per call: back to back, or (period_s > 0) one call per period as a node at
    that rate makes them, asleep in between. Paced calls start with cold caches: on a 2-core
    VM the same ONNX chain took 94 us back to back and 235-255 us paced at 500 Hz."""
    for _ in range(warmup):
        fn()
    ts = np.empty(iters)
    next_at = time.perf_counter()
    for i in range(iters):
        if period_s > 0:
            next_at += period_s
            time.sleep(max(0.0, next_at - time.perf_counter()))
        t0 = time.perf_counter_ns()
        fn()
        ts[i] = time.perf_counter_ns() - t0
    ts /= 1e3  # microseconds
    return {"p50": float(np.percentile(ts, 50)), "p99": float(np.percentile(ts, 99)), "max": float(ts.max()),
            "per_s": float(1e6 / ts.mean())}


def _torch_cases(policy_path: str, guidance: float):
    """The same decisions in torch eager, from the policy.pt the bundle was exported from."""
    from algd_runtime.learn.checkpoint import agent_from_checkpoint, load_checkpoint

    agent = agent_from_checkpoint(load_checkpoint(policy_path), "cpu", with_optimizers=False)
    pol, lam = agent.policy, agent.lam
    obs1 = torch.zeros(1, agent.spec.obs_dim)
    guide = (lambda s, a: agent.energy_grad(s, a, lam), guidance)

    def best_of(n: int, guided: bool):
        obs = obs1.expand(n, -1)
        x, nz = pol.draw_noise(n)
        with torch.no_grad():
            cand = pol.chain(obs, x, nz, guide=guide if guided else None)[0]
            la, _, _ = agent.energy(obs, cand, lam)
        return cand[la.argmin()]

    def deterministic(guided: bool):
        with torch.no_grad():
            return pol.chain(obs1, torch.zeros(1, agent.spec.act_dim), None, guide=guide if guided else None)[0]

    return deterministic, best_of


def escalation_cases(base_lambda: float, remaining: float, exchange_rate: float | None = None
                     ) -> tuple[float, list[tuple[str, dict]]]:
    """The shipped control rate, and PolicyRuntime.act's arguments at each of the monitor's
    levels as the shipped parameter file composes them (the monitor's level_response applied
    to the controller's own parameters, as the controller does). STOP runs no policy."""
    from dataclasses import replace

    from algd_runtime.deploy.control import ControllerParams, act_kwargs
    from algd_runtime.deploy.monitor import ESCALATION, Level, level_response
    from algd_runtime.ros.launcher import shipped_param

    rate = float(shipped_param("controller", "control_rate_hz", 500.0))
    d = ControllerParams()
    own = ControllerParams(mode=shipped_param("controller", "mode", d.mode),
                           best_of_n=int(shipped_param("controller", "best_of_n", d.best_of_n)),
                           lagrange_multiplier=float(shipped_param("controller", "lagrange_multiplier",
                                                                   d.lagrange_multiplier)),
                           guidance_scale=float(shipped_param("controller", "guidance_scale", d.guidance_scale)))
    escalation = {k: shipped_param("monitor", k, v) for k, v in ESCALATION.items()}
    return rate, [(level.name, act_kwargs(replace(own, **level_response(level, base_lambda, escalation, remaining,
                                                                         exchange_rate))))
                  for level in (Level.OK, Level.WARN, Level.ERROR)]


def _escalation_levels(rt, obs: np.ndarray, iters: int) -> list[dict]:
    """Each level's decision time (ONNX Runtime, CPU) against the shipped control period."""
    rate, levels = escalation_cases(rt.lagrange_multiplier, float(rt.manifest["budget"]["cost_limit"]),
                                    rt.exchange_rate)
    period_us = 1e6 / rate
    print(f"escalation levels at the shipped rate ({rate:g} Hz: a period of {period_us:.0f} us; the decision "
          f"must leave room for the messages in and out, ~0.3-1 ms on loopback here), one decision per "
          f"period as the controller makes them (back to back beside it: warm caches):")
    out = []
    for level, kw in levels:
        decide = lambda: rt.act(obs, **kw)  # noqa: E731 (one decision, timed two ways)
        warm = _latency(decide, iters)
        r = _latency(decide, iters, warmup=10, period_s=1.0 / rate)
        what = (f"best-of-{kw['n']}" if kw["mode"] == "best_of_n" else kw["mode"]) + (
            f", guided w {kw['guidance_scale']:g}" if kw.get("guidance_scale") else "")
        share = 100.0 * r["p99"] / period_us
        print(f"  {level:<6} {what:<28} p50 {r['p50']:>8.1f} us  p99 {r['p99']:>8.1f} us  "
              f"{share:>5.1f} % of the period{'' if r['p99'] < period_us else '  DOES NOT FIT'}"
              f"  (back to back: p50 {warm['p50']:.1f} us, p99 {warm['p99']:.1f} us)")
        out.append({"level": level, **kw, **r, "back_to_back": warm, "period_us": period_us})
    return out


def bench_infer(bundle: str, policy: str | None, iters: int = 2000, providers: list[str] | None = None,
                guidance: float = 0.3) -> list[dict]:
    import onnxruntime as ort

    from algd_runtime.deploy.runtime import PolicyRuntime
    from algd_runtime.deploy.sessions import PROVIDERS

    available = ort.get_available_providers()
    providers = providers or [p for p, name in PROVIDERS.items() if name in available]
    rt0 = PolicyRuntime.load(bundle, provider="cpu")
    m = rt0.manifest
    print(machine_line("cpu" if providers == ["cpu"] else ",".join(providers)))
    print(f"bundle: {bundle} ({m['task']}, {m['schedule']['variant']}, K={m['schedule']['steps']}, "
          f"obs {m['obs_dim']}, act {m['act_dim']}), onnxruntime {ort.__version__}, guided w = {guidance}")
    cases = [("batch 1, deterministic", dict(mode="deterministic")),
             ("batch 1, guided", dict(mode="deterministic", guidance_scale=guidance)),
             ("best-of-16", dict(mode="best_of_n", n=16)),
             ("best-of-16, guided", dict(mode="best_of_n", n=16, guidance_scale=guidance)),
             ("best-of-64", dict(mode="best_of_n", n=64)),
             ("best-of-64, guided", dict(mode="best_of_n", n=64, guidance_scale=guidance))]
    header = f"{'engine':<14} {'case':<24} {'p50 us':>9} {'p99 us':>9} {'max us':>9} {'actions/s':>10}"
    _print_header(header)
    rows = []

    def emit(engine: str, case: str, r: dict) -> None:
        rows.append({"engine": engine, "case": case, **r})
        print(f"{engine:<14} {case:<24} {r['p50']:>9.1f} {r['p99']:>9.1f} {r['max']:>9.1f} {r['per_s']:>10.0f}",
              flush=True)

    obs = np.zeros(rt0.obs_dim, np.float32)
    for prov in providers:
        rt = rt0 if prov == "cpu" else PolicyRuntime.load(bundle, provider=prov)
        for case, kw in cases:
            emit(f"ort-{prov}", case, _latency(lambda: rt.act(obs, **kw), iters))
    _escalation_levels(rt0, obs, iters)
    if policy:
        torch.set_num_threads(1)
        deterministic, best_of = _torch_cases(policy, guidance)
        t_iters = max(iters // 4, 200)
        for case, kw in cases:
            guided = kw.get("guidance_scale", 0) > 0
            fn = (lambda: best_of(kw["n"], guided)) if kw["mode"] == "best_of_n" else (lambda: deterministic(guided))
            emit("torch-eager", case, _latency(fn, t_iters, warmup=50))
        ort_rows = {r["case"]: r for r in rows if r["engine"] == "ort-cpu"}
        print("speed-up of ort-cpu over torch eager (p50 / p99): " + "; ".join(
            f"{r['case']}: {r['p50'] / ort_rows[r['case']]['p50']:.1f}x / {r['p99'] / ort_rows[r['case']]['p99']:.1f}x"
            for r in rows if r["engine"] == "torch-eager" and r["case"] in ort_rows))
    return rows


# -- algd-bench loop ----------------------------------------------------------------------------
def bench_loop(bundle: str, rates: list[float], seconds: float, provider: str = "cpu", with_monitor: bool = True,
               load: int = 0, realtime: int = 0, guidance: float = 0.0, pin: bool = False, io: str | None = None,
               slice_us: int | None = None, executor: str | None = None) -> list[dict]:
    """The sim robot, the controller and (with_monitor, the default: the whole graph) the
    monitor as separate processes over DDS on loopback, at each rate; `load` CPU-bound
    processes run beside them; `realtime` > 0 runs the sim and the controller SCHED_FIFO at
    that priority and the monitor 10 below (SCHED_FIFO too: still ahead of the load); `pin`
    gives the controller the last CPU to itself and puts the sim and the monitor on the first
    (cpu_affinity): the decision path stays cache-warm, and the monitor, which reads the same
    messages as the controller, no longer takes the controller's core while it decides. Without the
    monitor the controller runs with its interlock off,
    so that the numbers are the loop's own; its budget account still stops spent episodes.
    Answered: the share of the robot's observations whose own action arrived within one
    period of the observation's publication; "before step": before the robot's next step,
    which the robot's own timer jitter also decides (a late tick is followed by an early one).
    io: an io file: the robot speaks standard messages (its rate set to each run's); an
    unstamped command answers the newest state it follows. slice_us: the nodes' sched_slice_us
    (None: their default; 0: the kernel's slice). executor: the nodes' executor (None: their
    default, lean; rclpy: rclpy's single-threaded one).
    Each node's CPU since it started its loop is printed per process (and its spinning
    thread) as a share of a core and in microseconds per robot step."""
    import json
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from algd_runtime.tools.faults import LOG_FORMAT, io_for_rate, io_step_cost, last_warnings
    from algd_runtime.ros.launcher import default_params, node_command, stop_nodes
    from algd_runtime.contract.keys import create_key

    env = dict(os.environ, PYTHONUNBUFFERED="1", RCUTILS_CONSOLE_OUTPUT_FORMAT=LOG_FORMAT, RCUTILS_COLORIZED_OUTPUT="0")
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    print(machine_line("cpu") + f"; Python {python_speed():.0f} M loop iterations/s (a bare loop: the nodes' "
          f"cost per message scales with it)")
    graph = "sim, controller and monitor" if with_monitor else "sim and controller (no monitor)"
    print(f"bundle: {bundle}; {graph} as processes, DDS over loopback "
          f"(ROS_AUTOMATIC_DISCOVERY_RANGE={env['ROS_AUTOMATIC_DISCOVERY_RANGE']}), "
          f"{load} CPU-bound process(es) beside, {seconds:g} s per rate, "
          + (f"nodes SCHED_FIFO {realtime}" if realtime else "default scheduler")
          + ("" if slice_us is None else f", sched_slice_us {slice_us}" + (" (the kernel's)" if slice_us == 0 else ""))
          + ("" if executor is None else f", executor {executor}")
          + (f", guided (guidance_scale {guidance:g})" if guidance else ", unguided")
          + (", controller pinned to a CPU of its own, sim and monitor to another" if pin else "")
          + (f", standard messages ({io})" if io else ", raw contract"))
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    cpus = sorted(os.sched_getaffinity(0))
    sim_cpu, ctl_cpu = ({"cpu_affinity": f"[{cpus[0]}]"}, {"cpu_affinity": f"[{cpus[-1]}]"}) if pin else ({}, {})
    header = (f"{'rate Hz':>7} {'steps/s':>9} {'answered %':>10} {'before step %':>13} {'stops':>6} {'fallback %':>10} "
              f"{'overruns':>8} "
              f"{'ctl p50 ms':>10} {'ctl p99 ms':>10} {'o->a p50 ms':>11} {'o->a p99 ms':>11} {'o->a max ms':>11}")
    _print_header(header)
    rows = []
    for rate in rates:
        with tempfile.TemporaryDirectory() as tmp:
            names = ("controller", "sim", "monitor") if with_monitor else ("controller", "sim")
            files = {n: os.path.join(tmp, f"{n}.json") for n in names}
            key = create_key(os.path.join(tmp, "operator.key"))
            wired, scaled = {}, {}
            if io:  # a cost per time, as the fault bench, but 1 per 100 ms: the budget binds after half a
                # second of motion, and a stop that takes steps to land (5 at 100 Hz under load) never
                # makes the margin exceed the budget, which would hold the robot for good (the fault
                # bench's 1 per 10 ms did, at 100 Hz on a loaded machine)
                wired = {"io": str(io_for_rate(Path(io), rate, Path(tmp)))}
                scaled = {"max_step_cost": io_step_cost(rate, per_second=10.0)}
            sched = {} if slice_us is None else {"sched_slice_us": int(slice_us)}
            if executor is not None:
                sched["executor"] = executor
            procs = {
                "controller": node_command("controller", "algd_bench", default_params(), bundle, provider=provider,
                                           control_rate_hz=float(rate), obs_timeout_s=5.0 / rate,
                                           require_monitor=str(with_monitor).lower(), operator_key_file=key,
                                           stop_latch="episode",  # a spent budget ends the episode, not the run
                                           summary_file=files["controller"], realtime_priority=realtime,
                                           guidance_scale=float(guidance), **ctl_cpu, **sched, **wired, **scaled),
                "sim": node_command("sim", "algd_bench", default_params(), None, rate_hz=float(rate),
                                    summary_file=files["sim"], realtime_priority=realtime, **sim_cpu, **sched, **wired,
                                    **({"cost_scale": scaled["max_step_cost"]} if io else {})),
            }
            if with_monitor:
                procs["monitor"] = node_command("monitor", "algd_bench", default_params(), bundle,
                                                operator_key_file=key, stop_latch="episode", use_critic="false",
                                                state_file=os.path.join(tmp, "monitor_state.json"),
                                                summary_file=files["monitor"], **sched, **wired, **scaled,
                                                # pinned with the sim, not the controller (BENCHMARKS.md,
                                                # "headroom, where the rest goes")
                                                **sim_cpu,
                                                # below the loop's two: its deadline is 250 ms, theirs a period
                                                realtime_priority=max(1, realtime - 10) if realtime else 0)
            burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
            try:
                running = {}
                for n, cmd in procs.items():
                    with open(os.path.join(tmp, f"{n}.log"), "w") as log:  # the child keeps its own copy
                        running[n] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
                time.sleep(seconds)
                stop_nodes(running, timeout=30.0)
            finally:
                for b in burners:  # ours, by PID
                    b.kill()
                    b.wait()
            missing = [n for n, f in files.items() if not os.path.exists(f)]
            if missing:  # a node that never ran its loop: its own words
                tails = {n: open(os.path.join(tmp, f"{n}.log")).read().strip().splitlines()[-5:] for n in missing}
                raise RuntimeError("; ".join(f"{n} wrote no summary; its log ends: " + " | ".join(t)
                                             for n, t in tails.items()))
            summaries = {n: json.load(open(f)) for n, f in files.items()}
            if summaries["sim"]["steps"] < rate * seconds / 2:  # the robot mostly held: the nodes say why
                for n in names:
                    for line in last_warnings(Path(tmp) / f"{n}.log"):
                        print(f"        {n} held? its log: {line}", flush=True)
        ctl, sim = summaries["controller"], summaries["sim"]
        ticks = ctl["ticks"]
        # Fallbacks are the holds of a running loop (stale, NaN, engine errors). Not counted:
        # ticks before the first observation (discovery) and stops (the start-up hold, spent
        # budgets: the robot was told to stop, and did).
        stops = ctl.get("fallback_stop", 0)
        fallbacks = ctl["fallbacks"] - ctl.get("fallback_no_observation", 0) - stops
        counted = ticks - ctl.get("fallback_no_observation", 0) - stops
        # An io robot's episode's last state is followed at once by the next one's first:
        # unstamped commands answer the newest, so it is not counted as one to answer.
        answerable = sim["observations"] - sim.get("superseded", 0)
        row = {"rate_hz": rate, "achieved_hz": sim["steps"] / seconds, "ticks": ticks, "stops": stops,
               "answered_pct": 100.0 * sim["answered_in_period"] / max(answerable, 1),
               "before_step_pct": 100.0 * sim["answered"] / max(answerable, 1),
               "fallback_pct": 100.0 * fallbacks / max(counted, 1), "overruns": ctl["overruns"],
               "ctl_p50_ms": ctl["latency_p50_ms"], "ctl_p99_ms": ctl["latency_p99_ms"],
               "oa_p50_ms": sim["latency_p50_ms"], "oa_p99_ms": sim["latency_p99_ms"], "oa_max_ms": sim["latency_max_ms"],
               "with_monitor": with_monitor, "load": load, "realtime": realtime, "guidance": guidance, "pin": pin,
               "fallbacks_by_reason": {k: v for k, v in ctl.items() if k.startswith("fallback_")},
               "cpu": _cpu_per_step(summaries, sim["steps"]), "io": io, "io_errors": ctl.get("io_errors", {}),
               "costs": ctl.get("costs")}
        rows.append(row)
        print(f"{rate:>7g} {row['achieved_hz']:>9.1f} {row['answered_pct']:>10.2f} {row['before_step_pct']:>13.2f} "
              f"{stops:>6} "
              f"{row['fallback_pct']:>10.3f} {row['overruns']:>8} "
              f"{row['ctl_p50_ms']:>10.3f} {row['ctl_p99_ms']:>10.3f} {row['oa_p50_ms']:>11.3f} "
              f"{row['oa_p99_ms']:>11.3f} {row['oa_max_ms']:>11.3f}", flush=True)
        print("        CPU while running: " + "; ".join(
            f"{n} {c['core_pct']:.0f} % of a core ({c['main_thread_pct']:.0f} % its spinning thread), "
            f"{c['us_per_step']:.0f} us per robot step, on CPU {','.join(map(str, c['cpus']))}"
            for n, c in row["cpu"].items()), flush=True)
    return rows


def _cpu_per_step(summaries: dict, steps: int) -> dict:
    """Each node's CPU since it started its loop (its summary's `cpu`): the share of a core,
    its spinning thread's share (the rest is DDS's threads), per robot step, and the CPUs it
    was allowed to run on (its cpu_affinity as it was, read back)."""
    out = {}
    for name, summary in summaries.items():
        cpu = summary.get("cpu") or {}
        if cpu.get("wall_s"):
            out[name] = {"core_pct": 100.0 * cpu["process_s"] / cpu["wall_s"],
                         "main_thread_pct": 100.0 * cpu["main_thread_s"] / cpu["wall_s"],
                         "us_per_step": 1e6 * cpu["process_s"] / max(steps, 1), "cpus": cpu.get("cpus", [])}
    return out
