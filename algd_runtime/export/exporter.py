"""policy.pt -> bundle: denoiser.onnx (guided), denoiser_unguided.onnx (w = 0 fast path),
critics.onnx and manifest.yaml, with the torch-vs-ONNX parity measured at export."""

from __future__ import annotations

import math
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import yaml

from algd_runtime.learn.algd import ALGDAgent
from algd_runtime.learn.checkpoint import agent_from_checkpoint, load_checkpoint
from algd_runtime.export.graph import DenoiserEmitter, EnergyEmitter, GraphBuilder
from algd_runtime.contract.bundle import (
    BUNDLE_SCHEMA,
    BUNDLE_SCHEMA_VERSION,
    DIGEST_FILE,
    MANIFEST,
    SIGNATURE_FILE,
    sha256_file,
)

DEFAULT_OPSET = 17
PARITY_TOLERANCE = 1e-4
STALE_TEMP_S = 600  # a temp folder this old is left by a killed export, not one in progress
FILES = {"denoiser": "denoiser.onnx", "denoiser_unguided": "denoiser_unguided.onnx", "critics": "critics.onnx"}


class ExportError(RuntimeError):
    """The bundle could not be made (for instance parity above tolerance)."""


def _energy(g: GraphBuilder, agent: ALGDAgent) -> EnergyEmitter:
    return EnergyEmitter(g, agent.critic.state_dict(), agent.cost_critics.state_dict(), agent.spec.obs_dim,
                         agent.h, agent.cfg.rho, agent.cfg.qc_risk_k)


def build_denoiser(agent: ALGDAgent, guided: bool, batch: int | str = "batch", opset: int = DEFAULT_OPSET
                   ) -> onnx.ModelProto:
    """The K-step reverse chain, unrolled. Inputs: observation [B, obs], initial_latent
    [B, act], step_noise [K, B, act] (step_noise[k] is added after step k > 0; zeros and a
    zero latent give the deterministic chain), and if guided lagrange_multiplier [1] and
    guidance_scale [1]. Output: action [B, act]."""
    pol, spec = agent.policy, agent.spec
    o, a, K = spec.obs_dim, spec.act_dim, pol.steps
    g = GraphBuilder("algd_denoiser_guided" if guided else "algd_denoiser")
    obs = g.input("observation", [batch, o])
    x = g.input("initial_latent", [batch, a])
    noise = g.input("step_noise", [K, batch, a])
    if guided:
        lam, w = g.input("lagrange_multiplier", [1]), g.input("guidance_scale", [1])
        energy = _energy(g, agent)
        parts = energy.prepare(obs)  # the observation's share, once per chain
    den = DenoiserEmitter(g, pol.state_dict(), o, a)
    obs_part = den.obs_part(obs)
    scale, bias = g.const(pol.action_scale.numpy()), g.const(pol.action_bias.numpy())

    def squash(latent: str) -> str:
        return g.op("Add", g.op("Mul", g.op("Tanh", latent), scale), bias)

    def noise_at(k: int) -> str:
        return g.op("Gather", noise, g.const(np.array(k, np.int64)), axis=0)

    def unit(v: str) -> str:
        norm = g.op("Sqrt", g.sum_axis(g.op("Mul", v, v), 1))
        return g.op("Div", v, g.op("Add", norm, g.const(np.float32(1e-8))))

    for k in reversed(range(K)):
        act = squash(x)
        if pol.variant == "vesde":
            d2 = float(pol.ve_delta_sigma2[k].clamp(min=1e-8))
            phi = den(obs_part, act, k, "score")
            if guided:
                phi = g.op("Sub", phi, g.op("Mul", w, energy(obs, act, lam, parts)["grad"]))
            x = g.op("Add", x, g.op("Mul", g.const(np.float32(d2)), phi))
            step_std = np.sqrt(d2)
        else:
            beta, alpha = float(pol.betas[k]), float(pol.alphas[k])
            abar, abar_prev = float(pol.alphas_cumprod[k]), float(pol.alphas_cumprod_prev[k])
            eps = den(obs_part, x, k, "eps")
            x0 = g.op("Div", g.op("Sub", x, g.op("Mul", g.const(np.float32(np.sqrt(1 - abar))), eps)),
                      g.const(np.float32(np.sqrt(abar + 1e-8))))
            c_x0 = np.sqrt(abar_prev) * beta / (1 - abar + 1e-8)
            c_x = np.sqrt(alpha) * (1 - abar_prev) / (1 - abar + 1e-8)
            x = g.op("Add", g.op("Mul", g.const(np.float32(c_x0)), x0), g.op("Mul", g.const(np.float32(c_x)), x))
            gs = pol.guidance_scale
            if gs != 0.0:
                x = g.op("Add", x, g.op("Mul", g.const(np.float32(gs)), unit(den(obs_part, act, k, "score"))))
            if guided:
                step = g.op("Mul", g.op("Mul", w, g.const(np.float32(gs))), unit(energy(obs, act, lam, parts)["grad"]))
                x = g.op("Sub", x, step)
            step_std = np.sqrt(beta * (1 - abar_prev) / (1 - abar + 1e-8) + 1e-8)
        if k > 0:
            x = g.op("Add", x, g.op("Mul", g.const(np.float32(step_std)), noise_at(k)))
    g.output(squash(x), "action", [batch, a])
    return g.model(opset, doc=f"ALGD {pol.variant} reverse chain, K={K}, {'guided' if guided else 'unguided'}")


def build_critics(agent: ALGDAgent, batch: int | str = "batch", opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """(observation, action, lagrange_multiplier) -> q_min, qc_mean, qc_risk, energy [B, 1], grad [B, act]."""
    spec = agent.spec
    g = GraphBuilder("algd_critics")
    obs = g.input("observation", [batch, spec.obs_dim])
    act = g.input("action", [batch, spec.act_dim])
    lam = g.input("lagrange_multiplier", [1])
    out = _energy(g, agent)(obs, act, lam)
    for name in ("q_min", "qc_mean", "qc_risk", "energy"):
        g.output(out[name], name, [batch, 1])
    g.output(out["grad"], "grad", [batch, spec.act_dim])
    return g.model(opset, doc="ALGD critics: Q_min, Qc mean / risk, augmented Lagrangian and its action gradient")


# -- parity ------------------------------------------------------------------------------
def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def random_observations(spec, n: int, seed: int = 0, steps: int = 2000) -> tuple[np.ndarray, str]:
    """n random observations at the scale of the task's own: Gaussian with the per-dimension
    mean and std of a random-action rollout in the task (standard normal if the task cannot be
    made here). Physically inconsistent inputs far outside that range give critic gradients in
    the hundreds, where float32 rounding alone exceeds any useful tolerance."""
    rng = np.random.default_rng(seed)
    try:
        from algd_runtime.sim import make_task

        env = make_task(spec.name, seed=seed, budget=spec.budget, **spec.shift)
    except Exception:  # a task not available on this machine
        return rng.standard_normal((n, spec.obs_dim)).astype(np.float32), "standard normal"
    seen, (obs, _) = [], env.reset(seed=seed)
    low, high = np.asarray(spec.act_low), np.asarray(spec.act_high)
    for _ in range(steps):
        seen.append(obs)
        obs, _, _, term, trunc, _ = env.step(rng.uniform(low, high))
        if term or trunc:
            obs, _ = env.reset()
    env.close()
    seen = np.asarray(seen, np.float64)
    mean, std = seen.mean(0), seen.std(0) + 1e-3
    return (mean + std * rng.standard_normal((n, spec.obs_dim))).astype(np.float32), \
        f"Gaussian fitted to {steps} steps of {spec.name} under random actions"


# Where float32 rounding alone can put torch and ONNX Runtime on different sides of a kink:
# within this fraction of the magnitude of the terms summed into the kink's argument.
KINK_BAND = 1e-5


def near_kink(agent: ALGDAgent, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """[B] bool: (obs, act) lies within rounding of a kink of grad_a L_A, where the gradient
    jumps: a ReLU of either reward critic, or the min of the twins. (The cost ensemble's SiLU
    is smooth, and max(0, .)^2 of the augmented term has a continuous gradient.) There the
    two engines may take different branches; the gradient itself is then not a parity test."""
    def layer(x, lin):  # the layer's output and, per element, the magnitude of what it sums
        return lin(x), torch.abs(x) @ torch.abs(lin.weight).T + torch.abs(lin.bias)

    crit = agent.critic
    with torch.no_grad():
        near = torch.zeros(obs.shape[0], dtype=torch.bool)
        xu, q = torch.cat([obs, act], dim=-1), []
        for hidden1, hidden2, head in ((crit.linear1, crit.linear2, crit.linear3),
                                       (crit.linear4, crit.linear5, crit.linear6)):
            h = xu
            for lin in (hidden1, hidden2):
                z, scale = layer(h, lin)
                near |= (torch.abs(z) <= KINK_BAND * scale).any(1)
                h = torch.relu(z)
            q.append(layer(h, head))
        (q1, s1), (q2, s2) = q
        near |= (torch.abs(q1 - q2) <= KINK_BAND * (s1 + s2)).squeeze(1)
    return near


def energy_term_scales(agent: ALGDAgent, obs: torch.Tensor, act: torch.Tensor, lam: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The magnitudes of the terms L_A and grad_a L_A subtract, [B, 1] and [B, act]: |Q_min| and
    the penalty's two squares (c^2 + lam^2) / (2 rho), where c = max(0, lam + rho (Qc_risk - h));
    |grad_a Q_min| and c |grad_a Qc_risk|."""
    with torch.enable_grad():
        a = act.detach().requires_grad_(True)
        _, q, qc = agent.energy(obs.detach(), a, lam)
        grad_q = torch.autograd.grad(q.sum(), a, retain_graph=True)[0]
        grad_qc = torch.autograd.grad(qc.sum(), a)[0]
    rho = agent.cfg.rho
    c = torch.clamp(lam + rho * (qc.detach() - agent.h), min=0.0)
    return q.detach().abs() + (c**2 + lam**2) / (2.0 * rho), grad_q.abs() + c * grad_qc.abs()


def measure_parity(agent: ALGDAgent, models: dict[str, onnx.ModelProto], n: int = 1000, seed: int = 0,
                   guidance: float = 0.5) -> tuple[dict[str, float], str, dict[str, Any]]:
    """Max abs error, ONNX Runtime vs torch, over n random observations with fixed noise:
    on actions (deterministic / stochastic, unguided / w = 0 / guided) and on the critics
    (relative to max(1, the magnitude of what each sums): Q and its gradient scale with the
    task's returns, and L_A subtracts the cost's pull from the reward's).

    The critics' gradient and the guided actions (which follow it) are certified on the
    points away from every kink (near_kink); the points near one are counted and their
    error reported apart (third value), never refused: there either branch is correct."""
    spec, pol = agent.spec, agent.policy
    gen = torch.Generator().manual_seed(seed)
    obs_np, source = random_observations(spec, n, seed)
    obs = torch.from_numpy(obs_np)
    x_init, noises = pol.draw_noise(n, gen)
    zeros_x, zeros_n = torch.zeros_like(x_init), torch.zeros_like(noises)
    lam = agent.lam
    chain_near = torch.zeros(n, dtype=torch.bool)

    def grad_fn(s, a):  # the guided chain's gradient, noting each row that passes near a kink
        chain_near.logical_or_(near_kink(agent, s, a))
        return agent.energy_grad(s, a, lam)

    sess = {k: _session(m) for k, m in models.items()}
    feeds = lambda x, nz: {"observation": obs.numpy(), "initial_latent": x.numpy(), "step_noise": nz.numpy()}  # noqa: E731
    lam_w = {"lagrange_multiplier": np.array([lam], np.float32), "guidance_scale": np.array([guidance], np.float32)}
    out: dict[str, float] = {}
    near_report: dict[str, Any] = {"band": KINK_BAND}
    with torch.no_grad():
        for mode, (x, nz) in {"deterministic": (zeros_x, zeros_n), "stochastic": (x_init, noises)}.items():
            ref = pol.chain(obs, x, None if mode == "deterministic" else nz)[0].numpy()
            got = sess["denoiser_unguided"].run(None, feeds(x, nz))[0]
            out[f"{mode}_unguided"] = float(np.abs(got - ref).max())
            got = sess["denoiser"].run(None, {**feeds(x, nz), **lam_w, "guidance_scale": np.zeros(1, np.float32)})[0]
            out[f"{mode}_w0"] = float(np.abs(got - ref).max())
            chain_near.zero_()
            ref_g = pol.chain(obs, x, None if mode == "deterministic" else nz, guide=(grad_fn, guidance))[0].numpy()
            got = sess["denoiser"].run(None, {**feeds(x, nz), **lam_w})[0]
            err, near = np.abs(got - ref_g).max(1), chain_near.numpy().copy()
            out[f"{mode}_guided"] = float(err[~near].max(initial=0.0))
            near_report[f"{mode}_guided"] = {"points": int(near.sum()), "max_abs_error": float(err[near].max(initial=0.0))}
        act = torch.rand(n, spec.act_dim, generator=gen) * 2 - 1
        act = act * pol.action_scale + pol.action_bias
        la, q, qc = agent.energy(obs, act, lam)
        got = dict(zip(["q_min", "qc_mean", "qc_risk", "energy", "grad"],
                       sess["critics"].run(None, {"observation": obs.numpy(), "action": act.numpy(),
                                                  "lagrange_multiplier": lam_w["lagrange_multiplier"]})))
    grad = agent.energy_grad(obs, act, lam).numpy()
    energy_scale, grad_scale = energy_term_scales(agent, obs, act, lam)
    # Relative for the critic values: Q can be in the hundreds on long-horizon tasks. L_A and
    # its gradient are differences (reward against cost), which cancel near the budget: their
    # error is relative to the terms they subtract, as float32 rounds those.
    for name, ref, scale in (("q_min", q, q.abs()), ("qc_risk", qc, qc.abs()), ("energy", la, energy_scale)):
        r = ref.numpy()
        out[f"critics_{name}"] = float((np.abs(got[name] - r) / np.maximum(1.0, scale.numpy())).max())
    err, near = (np.abs(got["grad"] - grad) / np.maximum(1.0, grad_scale.numpy())).max(1), near_kink(agent, obs, act).numpy()
    out["critics_grad"] = float(err[~near].max(initial=0.0))
    near_report["critics_grad"] = {"points": int(near.sum()), "max_abs_error": float(err[near].max(initial=0.0))}
    return out, source, near_report


def parity_points(agent: ALGDAgent, n: int = 1000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The (observation, action) pairs at which measure_parity compares the critics."""
    gen = torch.Generator().manual_seed(seed)
    obs = torch.from_numpy(random_observations(agent.spec, n, seed)[0])
    agent.policy.draw_noise(n, gen)
    act = torch.rand(n, agent.spec.act_dim, generator=gen) * 2 - 1
    return obs, act * agent.policy.action_scale + agent.policy.action_bias


# -- the bundle -------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    import onnxruntime

    return {"python": platform.python_version(), "torch": str(torch.__version__), "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}


def measured_exchange_rate(agent: ALGDAgent, ckpt: dict) -> float | None:
    """The policy's exchange rate (algd.exchange_rate) over a rollout in its task, for the
    monitor's WARN; None where the task cannot be made on this machine."""
    from algd_runtime.learn.algd import exchange_rate
    from algd_runtime.learn.checkpoint import policy_task

    try:
        env = policy_task(ckpt)
    except Exception:  # a task not available here: the monitor falls back to the multiplier's own rule
        return None
    try:
        rate = exchange_rate(agent, env)
    finally:
        env.close()
    return rate if math.isfinite(rate) and rate > 0 else None


def manifest_for(agent: ALGDAgent, ckpt: dict, opset: int, batch, parity: dict, parity_source: str,
                 near: dict, files: dict, rate: float | None = None) -> dict[str, Any]:
    spec, pol, cfg = agent.spec, agent.policy, agent.cfg
    schedule: dict[str, Any] = {"variant": pol.variant, "steps": pol.steps, "initial_std": pol.initial_std}
    if pol.variant == "vesde":
        schedule["sigmas"] = [float(v) for v in pol.ve_sigmas]
    else:
        schedule["betas"] = [float(v) for v in pol.betas]
        schedule["guidance_scale"] = float(pol.guidance_scale)
    return {
        "schema": BUNDLE_SCHEMA,
        "schema_version": BUNDLE_SCHEMA_VERSION,
        "task": spec.name,
        "shift": dict(spec.shift),
        "obs_dim": spec.obs_dim,
        "act_dim": spec.act_dim,
        "act_low": list(spec.act_low),
        "act_high": list(spec.act_high),
        "batch": batch if isinstance(batch, int) else "dynamic",
        "schedule": schedule,
        "budget": {"cost_limit": spec.cost_limit, "semantics": spec.cost_semantics, "cost_gamma": cfg.cost_gamma,
                   "target_h": agent.h, "episode_length": spec.episode_length,
                   "max_step_cost": spec.max_step_cost},
        "energy": {"rho": cfg.rho, "qc_risk_k": cfg.qc_risk_k, "qc_ensemble": cfg.qc_ensemble},
        "lagrange_multiplier": agent.lam,
        # median |grad_a Q_min| / median |grad_a Qc_risk| at the policy's actions: the monitor's
        # WARN asks for a multiple of it (null: not measured; the old rule then)
        "exchange_rate": rate,
        "source": {"origin": ckpt.get("origin"), "created": ckpt.get("created"),
                   "env_steps": (ckpt.get("train_state") or {}).get("env_steps")},
        "opset": opset,
        "versions": _versions(),
        "parity": {"tolerance": PARITY_TOLERANCE, "observations": parity.pop("observations"),
                   "observations_from": parity_source, "guidance_scale": 0.5,
                   "max_abs_error": parity, "near_kink": near},
        "files": files,
    }


def _remove_stale_temps(out_dir: Path) -> None:
    """Temp folders .<name>.XXXXXXXX that a killed export left beside the bundle."""
    if not out_dir.parent.is_dir():
        return
    for p in out_dir.parent.glob(f".{out_dir.name}.*"):
        rest = p.name[len(out_dir.name) + 2:]
        # "." in the rest: the temp folder of another bundle, e.g. .<name>.v2.XXXXXXXX
        if "." not in rest and p.is_dir() and time.time() - p.stat().st_mtime > STALE_TEMP_S:
            shutil.rmtree(p, ignore_errors=True)


def _is_bundle(folder: Path) -> bool:
    """A folder that holds a bundle and nothing else (what --force may replace)."""
    names = {p.name for p in folder.iterdir()}
    if not names <= {*FILES.values(), MANIFEST, DIGEST_FILE, SIGNATURE_FILE} or MANIFEST not in names:
        return False
    try:
        manifest = yaml.safe_load((folder / MANIFEST).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(manifest, dict) and manifest.get("schema") == BUNDLE_SCHEMA


def check_out_dir(policy: str | Path, out_dir: str | Path, force: bool = False) -> None:
    """Where a bundle may go: a new or empty folder, or, with force, a folder that holds a
    bundle and nothing else; never a file, and never a folder that holds the policy itself.
    ExportError says why not and that nothing was written."""
    policy, out = Path(policy).resolve(), Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise ExportError(f"-o: {out_dir} is a file; expected a folder for the bundle (nothing was written)")
    if out == policy or out in policy.parents:
        raise ExportError(f"-o: {out_dir} holds the policy being exported ({policy}); choose another folder "
                          f"(nothing was written)")
    if out.is_dir() and any(out.iterdir()):
        if not _is_bundle(out):
            names = sorted(p.name for p in out.iterdir())
            raise ExportError(f"-o: {out_dir} is not empty and holds no bundle ({len(names)} entries: "
                              f"{', '.join(names[:3])}{', ...' if len(names) > 3 else ''}); choose a new or empty "
                              f"folder (nothing was written)")
        if not force:
            raise ExportError(f"-o: {out_dir} holds a bundle already; add --force to replace it (nothing was written)")


def export_bundle(policy: str | Path, out_dir: str | Path, batch: int | None = None, opset: int = DEFAULT_OPSET,
                  parity_n: int = 1000, tolerance: float = PARITY_TOLERANCE, force: bool = False,
                  signing_key: str | Path | None = None) -> dict[str, Any]:
    """Write the bundle atomically (a temp folder renamed into place), signed with
    signing_key (default: signing.default_signing_key_path(), created when missing); refuse
    above tolerance. out_dir: new or empty, or (force) an older bundle, which is replaced
    (check_out_dir)."""
    from algd_runtime.contract.signing import ensure_signing_key, sign_bundle

    if not 13 <= opset <= 21:
        raise ExportError(f"--opset: expected 13..21, got {opset}")
    if batch is not None and batch < 1:
        raise ExportError(f"--batch: expected a value >= 1, got {batch}")
    if parity_n < 1000:
        raise ExportError(f"parity: expected >= 1000 observations, got {parity_n}")
    ckpt = load_checkpoint(policy)  # first: a folder or a foreign file is named as what it is
    check_out_dir(policy, out_dir, force)
    _remove_stale_temps(Path(out_dir))
    signer, _ = ensure_signing_key(signing_key)
    agent = agent_from_checkpoint(ckpt, "cpu", with_optimizers=False)
    dim = batch if batch is not None else "batch"
    models = {"denoiser": build_denoiser(agent, True, dim, opset),
              "denoiser_unguided": build_denoiser(agent, False, dim, opset),
              "critics": build_critics(agent, dim, opset)}
    for m in models.values():
        onnx.checker.check_model(m, full_check=True)
    if batch is None:
        parity, source, near = measure_parity(agent, models, parity_n)
    else:  # fixed batch: measure with a dynamic twin of the same graphs
        twins = {"denoiser": build_denoiser(agent, True, "batch", opset),
                 "denoiser_unguided": build_denoiser(agent, False, "batch", opset),
                 "critics": build_critics(agent, "batch", opset)}
        parity, source, near = measure_parity(agent, twins, parity_n)
    worst = max(parity.values())
    parity["observations"] = parity_n
    if not all(math.isfinite(v) for v in parity.values()):  # NaN > tolerance is False
        raise ExportError(f"parity: non-finite error ({', '.join(f'{k}={v:.3g}' for k, v in parity.items())}): "
                          f"the graphs or the policy give NaN / Inf (non-finite weights?); bundle not written")
    if worst > tolerance:
        raise ExportError(f"parity: max abs error {worst:.3g} > {tolerance:g} "
                          f"({', '.join(f'{k}={v:.3g}' for k, v in parity.items())}); bundle not written")
    rate = measured_exchange_rate(agent, ckpt)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        files = {}
        for key, model in models.items():
            path = tmp / FILES[key]
            onnx.save(model, path)
            files[key] = {"path": FILES[key], "sha256": sha256_file(path), "bytes": path.stat().st_size}
        manifest = manifest_for(agent, ckpt, opset, batch, parity, source, near, files, rate)
        (tmp / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))
        # The bundle's digest: manifest.yaml lists every other file's sha256 (sha256sum format).
        (tmp / DIGEST_FILE).write_text(f"{sha256_file(tmp / MANIFEST)}  {MANIFEST}\n")
        sign_bundle(tmp, signer)  # who made it: the robot trusts only its public key (signing.py)
        for f in tmp.iterdir():
            f.chmod(0o644)
        tmp.chmod(0o755)  # mkdtemp makes 0700: other users (the ROS nodes' user) must read it
        check_out_dir(policy, out_dir, force)  # again: the folder may have changed during the parity run
        old = None
        if out_dir.exists():  # empty, or a bundle replaced with force: moved aside, then removed
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            out_dir.rename(old / out_dir.name)
        tmp.rename(out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
