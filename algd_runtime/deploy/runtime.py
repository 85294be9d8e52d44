"""The inference engine on the robot: an exported bundle run by ONNX Runtime. No torch.

    rt = PolicyRuntime.load("bundle/", provider="auto")
    rt = PolicyRuntime.load("bundle/", expect_digest=d, expect_task="PointHazard-v0", expect_dims=(8, 2))
    rt.digest                      # sha256 of manifest.yaml, which hashes every other file
    res = rt.act(obs)                                  # deterministic (x_K = 0, no noise)
    res = rt.act(obs, mode="stochastic", seed=1)
    res = rt.act(obs, mode="best_of_n", n=16, remaining_budget=2.0)
    res = rt.act(obs, guidance_scale=0.3, lagrange_multiplier=1.2)   # guided by -grad_a L_A
    res.action, res.valid          # a row with a NaN / Inf observation is invalid: its action is
                                   # the centre of the action box, never NaN; the caller falls back
    rt.evaluate(obs, action)       # q_min, qc_mean, qc_risk, energy, grad (for the monitor)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from algd_runtime.contract.bundle import BundleError, verified_manifest
from algd_runtime.deploy.sessions import ModelSessions

MODES = ("deterministic", "stochastic", "best_of_n")


@dataclass
class ActResult:
    action: np.ndarray  # [B, act] (or [act] for a single observation)
    valid: np.ndarray  # [B] bool: False where the observation or the output was not finite
    energy: np.ndarray | None = None  # best_of_n: L_A of the chosen candidate, [B]
    qc_risk: np.ndarray | None = None  # best_of_n: Qc_risk of the chosen candidate, [B]
    fits_budget: np.ndarray | None = None  # best_of_n with a budget: a candidate fitted, [B]
    extra: dict[str, Any] = field(default_factory=dict)


class PolicyRuntime:
    """The reverse-diffusion chain, acting (deterministic, stochastic, best-of-N with the
    shield) and the critics' evaluation, on a bundle's ONNX sessions (ModelSessions)."""

    def __init__(self, manifest: dict, sessions: ModelSessions, seed: int | None = None):
        self.manifest = manifest
        self.obs_dim, self.act_dim = int(manifest["obs_dim"]), int(manifest["act_dim"])
        self.steps = int(manifest["schedule"]["steps"])
        self.initial_std = float(manifest["schedule"]["initial_std"])
        self.act_low = np.asarray(manifest["act_low"], np.float32)
        self.act_high = np.asarray(manifest["act_high"], np.float32)
        self.centre = (self.act_low + self.act_high) / 2
        self.lagrange_multiplier = float(manifest["lagrange_multiplier"])
        rate = manifest.get("exchange_rate")  # what the monitor's WARN multiplies (None: not measured)
        self.exchange_rate = float(rate) if rate is not None else None
        self.models = sessions
        self.rng = np.random.default_rng(seed)
        self._zeros: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.digest: str | None = None  # bundle_digest() of the bundle it was loaded from

    @classmethod
    def load(cls, bundle: str | Path, provider: str = "auto", threads: int = 1, seed: int | None = None,
             bind_io: bool | None = None, expect_digest: str | None = None, expect_task: str | None = None,
             expect_dims: tuple[int, int] | None = None) -> "PolicyRuntime":
        """bind_io: run through fixed device buffers (default: on CUDA, where each graph and batch
        size gets its own session with CUDA-graph capture; on CPU plain run() is faster).
        expect_digest / expect_task / expect_dims (obs_dim, act_dim): refuse any other bundle."""
        bundle = Path(bundle)
        manifest, digest = verified_manifest(bundle)
        if expect_digest is not None and digest != expect_digest.strip().lower():
            raise BundleError(f"{bundle}: digest: expected {expect_digest}, got {digest} (another bundle, "
                              f"or this one re-exported)")
        if expect_task is not None and manifest["task"] != expect_task:
            raise BundleError(f"{bundle}: task: the bundle is for {manifest['task']}, expected {expect_task}")
        dims = (manifest["obs_dim"], manifest["act_dim"])
        if expect_dims is not None and dims != tuple(expect_dims):
            raise BundleError(f"{bundle}: obs_dim/act_dim: the bundle has {dims[0]}/{dims[1]}, expected "
                              f"{expect_dims[0]}/{expect_dims[1]}")
        rt = cls(manifest, ModelSessions.open(bundle, manifest, provider, threads, bind_io), seed)
        rt.digest = digest
        return rt

    @property
    def providers(self) -> list:
        return self.models.providers

    @property
    def bind_io(self) -> bool:
        return self.models.bind_io

    @property
    def provider(self) -> str:
        return self.models.provider

    def _run(self, key: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.models.run(key, feeds)

    # -- input checks ---------------------------------------------------------------------
    def _as_batch(self, obs, what: str = "observation", width: int | None = None) -> tuple[np.ndarray, bool]:
        width = self.obs_dim if width is None else width
        arr = np.asarray(obs)
        if arr.dtype.kind != "f":
            raise ValueError(f"{what}: expected a float array, got dtype {arr.dtype}")
        single = arr.ndim == 1
        if single:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != width:
            raise ValueError(f"{what}: expected shape ({width},) or (B, {width}), got {np.shape(obs)}")
        return np.ascontiguousarray(arr, dtype=np.float32), single

    @staticmethod
    def _finite_rows(x: np.ndarray) -> np.ndarray:
        return np.isfinite(x).all(axis=1)

    # -- acting --------------------------------------------------------------------------------
    def _noise(self, batch: int, stochastic: bool) -> tuple[np.ndarray, np.ndarray]:
        if not stochastic:
            if batch not in self._zeros:
                self._zeros[batch] = (np.zeros((batch, self.act_dim), np.float32),
                                      np.zeros((self.steps, batch, self.act_dim), np.float32))
            return self._zeros[batch]
        x = (self.rng.standard_normal((batch, self.act_dim)) * self.initial_std).astype(np.float32)
        return x, self.rng.standard_normal((self.steps, batch, self.act_dim)).astype(np.float32)

    def _chain(self, obs: np.ndarray, stochastic: bool, lam: float, w: float) -> np.ndarray:
        x, noise = self._noise(obs.shape[0], stochastic)
        feeds = {"observation": obs, "initial_latent": x, "step_noise": noise}
        if w == 0.0:
            return self._run("denoiser_unguided", feeds)[0]
        feeds["lagrange_multiplier"] = np.array([lam], np.float32)
        feeds["guidance_scale"] = np.array([w], np.float32)
        return self._run("denoiser", feeds)[0]

    def act(self, obs, mode: str = "deterministic", n: int = 16, seed: int | None = None,
            lagrange_multiplier: float | None = None, guidance_scale: float = 0.0,
            remaining_budget: float | None = None) -> ActResult:
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {list(MODES)}, got {mode!r}")
        if not np.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale: expected a finite value >= 0, got {guidance_scale}")
        lam = self.lagrange_multiplier if lagrange_multiplier is None else float(lagrange_multiplier)
        if not np.isfinite(lam) or lam < 0:
            raise ValueError(f"lagrange_multiplier: expected a finite value >= 0, got {lagrange_multiplier}")
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        batch, single = self._as_batch(obs)
        ok = self._finite_rows(batch)
        if not ok.all():  # compute on zeros, then replace: never let NaN into the graph
            batch = np.where(ok[:, None], batch, 0.0).astype(np.float32)
        if mode == "best_of_n":
            res = self._best_of_n(batch, n, lam, guidance_scale, remaining_budget)
        else:
            res = ActResult(self._chain(batch, mode == "stochastic", lam, guidance_scale), ok)
        res.valid = ok & self._finite_rows(res.action)
        res.action = np.where(res.valid[:, None], res.action, self.centre).astype(np.float32)
        # tanh * scale + bias in float32 can land ~1e-7 outside the box; the box is a hard limit.
        res.action = np.clip(res.action, self.act_low, self.act_high)
        if single:
            res.action = res.action[0]
        return res

    def _best_of_n(self, obs: np.ndarray, n: int, lam: float, w: float, budget: float | None) -> ActResult:
        """n stochastic candidates per observation in one batch; the lowest energy wins,
        optionally only among candidates whose Qc risk fits the remaining budget (if none
        fits, the one with the lowest risk: the safest available)."""
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n: expected an integer >= 1, got {n!r}")
        b = obs.shape[0]
        tiled = np.repeat(obs, n, axis=0)
        cand = self._chain(tiled, True, lam, w)
        ev = self.evaluate(tiled, cand, lam)
        energy, risk = ev["energy"].reshape(b, n), ev["qc_risk"].reshape(b, n)
        score = energy.copy()
        fits = np.ones(b, bool)
        if budget is not None:
            allowed = risk <= budget
            fits = allowed.any(axis=1)
            score = np.where(allowed, energy, np.inf)
            score[~fits] = risk[~fits]  # nothing fits: minimise the risk instead
        pick = np.argmin(score, axis=1)
        rows = np.arange(b)
        action = cand.reshape(b, n, self.act_dim)[rows, pick]
        return ActResult(action, np.ones(b, bool), energy[rows, pick], risk[rows, pick],
                         fits if budget is not None else None)

    def evaluate(self, obs, action, lagrange_multiplier: float | None = None) -> dict[str, np.ndarray]:
        """Critic quantities for (s, a): q_min, qc_mean, qc_risk, energy [B] and grad [B, act]."""
        o, single = self._as_batch(obs)
        a, _ = self._as_batch(action, "action", self.act_dim)
        if a.shape[0] != o.shape[0]:
            raise ValueError(f"action: expected {o.shape[0]} rows to match the observations, got {a.shape[0]}")
        lam = self.lagrange_multiplier if lagrange_multiplier is None else float(lagrange_multiplier)
        outs = self._run("critics", {"observation": o, "action": a,
                                     "lagrange_multiplier": np.array([lam], np.float32)})
        res = {name: v[:, 0] for name, v in zip(("q_min", "qc_mean", "qc_risk", "energy"), outs[:4])}
        res["grad"] = outs[4]
        if single:
            res = {k: v[0] for k, v in res.items()}
        return res
