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

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

BUNDLE_SCHEMA = "algd-runtime/bundle"
BUNDLE_SCHEMA_VERSION = 1
MODES = ("deterministic", "stochastic", "best_of_n")
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
_FILES = ("denoiser", "denoiser_unguided", "critics")
MANIFEST, DIGEST_FILE = "manifest.yaml", "manifest.sha256"
SIGNATURE_FILE = "signature.json"  # signs the digest (signing.py), so the manifest cannot list it


class BundleError(ValueError):
    """The bundle cannot be used; the message says which file and what does not match."""


@dataclass
class ActResult:
    action: np.ndarray  # [B, act] (or [act] for a single observation)
    valid: np.ndarray  # [B] bool: False where the observation or the output was not finite
    energy: np.ndarray | None = None  # best_of_n: L_A of the chosen candidate, [B]
    qc_risk: np.ndarray | None = None  # best_of_n: Qc_risk of the chosen candidate, [B]
    fits_budget: np.ndarray | None = None  # best_of_n with a budget: a candidate fitted, [B]
    extra: dict[str, Any] = field(default_factory=dict)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest_bytes(bundle: Path) -> tuple[bytes, str]:
    """manifest.yaml's bytes and sha256, checked against manifest.sha256. The manifest lists
    every other file's sha256, so its own hash is the digest of the whole bundle."""
    path = bundle / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: no manifest (is {bundle} a bundle written by algd-export?)")
    data = path.read_bytes()  # hashed and parsed from the same bytes
    digest = hashlib.sha256(data).hexdigest()
    record = bundle / DIGEST_FILE
    if not record.is_file():
        raise BundleError(f"{record}: missing (every bundle written by algd-export has one; re-export it)")
    text = record.read_text(errors="replace")
    parts = text.split()
    if len(parts) != 2 or parts[1] != MANIFEST:
        raise BundleError(f"{record}: expected one line '<sha256>  {MANIFEST}', got {text[:100]!r}")
    if parts[0] != digest:
        raise BundleError(f"{path}: sha256 {digest[:16]}... does not match {DIGEST_FILE}'s {parts[0][:16]}... "
                          f"(edited after export?)")
    return data, digest


def bundle_digest(bundle: str | Path) -> str:
    """The bundle's identity (sha256 of manifest.yaml), verified against manifest.sha256."""
    return _manifest_bytes(Path(bundle))[1]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _posint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def validate_manifest(m: dict[str, Any]) -> None:
    """Every field the runtime relies on, by value; the BundleError names the field."""
    def need(ok: bool, name: str, want: str, got: Any) -> None:
        if not ok:
            raise BundleError(f"{name}: expected {want}, got {got!r}")

    def section(name: str) -> dict:
        need(isinstance(m.get(name), dict), name, "a mapping", m.get(name))
        return m[name]

    need(isinstance(m.get("task"), str) and m["task"].strip() != "", "task", "a non-empty string", m.get("task"))
    for key in ("obs_dim", "act_dim"):
        need(_posint(m.get(key)), key, "an integer > 0", m.get(key))
    for key in ("act_low", "act_high"):
        v = m.get(key)
        need(isinstance(v, list) and len(v) == m["act_dim"] and all(map(_finite, v)), key,
             f"a list of {m['act_dim']} finite numbers", v)
    for i, (lo, hi) in enumerate(zip(m["act_low"], m["act_high"])):
        need(lo < hi, f"act_low[{i}]", f"below act_high[{i}] = {hi}", lo)
    budget = section("budget")
    v = budget.get("cost_limit")
    need(_finite(v) and v > 0, "budget.cost_limit", "a finite number > 0", v)
    need(budget.get("semantics") in ("episode", "discounted"), "budget.semantics", "'episode' or 'discounted'",
         budget.get("semantics"))
    v = budget.get("max_step_cost")  # absent or null: the task gives no bound
    need(v is None or (_finite(v) and v > 0), "budget.max_step_cost", "a finite number > 0 or null", v)
    v = m.get("lagrange_multiplier")
    need(_finite(v) and v >= 0, "lagrange_multiplier", "a finite number >= 0", v)
    schedule = section("schedule")
    need(_posint(schedule.get("steps")), "schedule.steps", "an integer > 0", schedule.get("steps"))
    v = schedule.get("initial_std")
    need(_finite(v) and v > 0, "schedule.initial_std", "a finite number > 0", v)
    parity = section("parity")
    tol = parity.get("tolerance")
    need(_finite(tol) and tol > 0, "parity.tolerance", "a finite number > 0", tol)
    errors = parity.get("max_abs_error")
    need(isinstance(errors, dict) and len(errors) > 0, "parity.max_abs_error", "a mapping of errors", errors)
    for key, v in errors.items():
        need(_finite(v) and v <= tol, f"parity.max_abs_error.{key}", f"a finite number <= {tol:g}", v)


def read_manifest(bundle: str | Path) -> dict[str, Any]:
    """Load and verify manifest.yaml (its digest, every field) and every file in the folder:
    each listed file's size and hash; nothing that is not listed."""
    return _read_manifest(Path(bundle))[0]


def _read_manifest(bundle: Path) -> tuple[dict[str, Any], str]:
    path = bundle / MANIFEST
    data, digest = _manifest_bytes(bundle)
    try:
        m = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise BundleError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(m, dict) or m.get("schema") != BUNDLE_SCHEMA:
        got = m.get("schema") if isinstance(m, dict) else type(m).__name__
        raise BundleError(f"{path}: schema: expected {BUNDLE_SCHEMA!r}, got {got!r}")
    if m.get("schema_version") != BUNDLE_SCHEMA_VERSION:
        raise BundleError(f"{path}: schema_version: expected {BUNDLE_SCHEMA_VERSION}, got {m.get('schema_version')!r}")
    for key in ("task", "obs_dim", "act_dim", "act_low", "act_high", "schedule", "budget", "parity", "files",
                "lagrange_multiplier"):
        if key not in m:
            raise BundleError(f"{path}: missing field {key!r}")
    try:
        validate_manifest(m)
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from None
    if not isinstance(m["files"], dict):
        raise BundleError(f"{path}: files: expected a mapping, got {m['files']!r}")
    for key in _FILES:
        if not m["files"].get(key):
            raise BundleError(f"{path}: files.{key}: missing")
    listed = {MANIFEST, DIGEST_FILE}
    for key, entry in m["files"].items():
        name = entry.get("path") if isinstance(entry, dict) else None
        # A plain name: a listed file cannot point outside the bundle folder.
        if not isinstance(name, str) or Path(name).name != name or name in (".", "..", MANIFEST, DIGEST_FILE):
            raise BundleError(f"{path}: files.{key}.path: expected a file name in the bundle folder, got {name!r}")
        listed.add(name)
        f = bundle / name
        if not f.is_file():
            raise BundleError(f"{f}: missing (listed in manifest.yaml as files.{key})")
        size = f.stat().st_size
        if size != entry.get("bytes"):
            raise BundleError(f"{f}: {size} bytes, manifest.yaml says {entry.get('bytes')} (truncated or replaced?)")
        got = sha256_file(f)
        if got != entry.get("sha256"):
            raise BundleError(f"{f}: sha256 {got[:16]}... does not match manifest.yaml's {str(entry.get('sha256'))[:16]}...")
    for p in sorted(bundle.iterdir()):
        if p.name not in listed and p.name != SIGNATURE_FILE:  # what the digest does not cover is not deployed
            raise BundleError(f"{p}: not part of the bundle (a bundle holds only {MANIFEST}, {DIGEST_FILE}, "
                              f"{SIGNATURE_FILE} and the files manifest.yaml lists); remove it")
    return m, digest


def resolve_providers(provider: str) -> list:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider == "auto":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if "CUDAExecutionProvider" in available \
            else ["CPUExecutionProvider"]
    if provider not in PROVIDERS:
        raise BundleError(f"provider: expected one of {['auto', *PROVIDERS]}, got {provider!r}")
    name = PROVIDERS[provider]
    if name not in available:
        raise BundleError(f"provider {provider!r}: {name} is not in this onnxruntime (available: "
                          f"{', '.join(available)}); install onnxruntime-gpu on a CUDA machine")
    if provider == "tensorrt":  # nodes TensorRT does not take fall back to CUDA, then CPU
        return [name, "CUDAExecutionProvider", "CPUExecutionProvider"]
    return [name, "CPUExecutionProvider"] if name != "CPUExecutionProvider" else [name]


class _BoundRunner:
    """A session whose inputs and outputs live in fixed buffers on the device (IO binding).
    On CUDA this is what lets ONNX Runtime capture the graph once and replay it; each call
    only copies the inputs in and the outputs out."""

    def __init__(self, session, feeds: dict[str, np.ndarray], device: str):
        import onnxruntime as ort

        self.session, self.io = session, session.io_binding()
        self.inputs = {}
        for name, arr in feeds.items():
            # A private copy: on CPU an OrtValue shares the numpy array's memory.
            self.inputs[name] = ort.OrtValue.ortvalue_from_numpy(np.array(arr, np.float32, copy=True), device, 0)
            self.io.bind_ortvalue_input(name, self.inputs[name])
        batch = feeds["observation"].shape[0]
        self.outputs = []
        for out in session.get_outputs():
            shape = [batch if not isinstance(d, int) else d for d in out.shape]
            self.outputs.append(ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, device, 0))
            self.io.bind_ortvalue_output(out.name, self.outputs[-1])

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        for name, arr in feeds.items():
            self.inputs[name].update_inplace(np.ascontiguousarray(arr))
        self.session.run_with_iobinding(self.io)
        return [o.numpy().copy() for o in self.outputs]  # the buffers are reused by the next call


class PolicyRuntime:
    def __init__(self, manifest: dict, sessions: dict, providers: list, seed: int | None = None,
                 bind_io: bool = False, session_factory=None, device: str = "cpu"):
        self.manifest = manifest
        self.obs_dim, self.act_dim = int(manifest["obs_dim"]), int(manifest["act_dim"])
        self.steps = int(manifest["schedule"]["steps"])
        self.initial_std = float(manifest["schedule"]["initial_std"])
        self.act_low = np.asarray(manifest["act_low"], np.float32)
        self.act_high = np.asarray(manifest["act_high"], np.float32)
        self.centre = (self.act_low + self.act_high) / 2
        self.lagrange_multiplier = float(manifest["lagrange_multiplier"])
        self.sessions, self.providers = sessions, providers
        self.rng = np.random.default_rng(seed)
        self._zeros: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.bind_io, self._session_factory, self._device = bind_io, session_factory, device
        self._runners: dict[tuple[str, int], _BoundRunner] = {}
        self.digest: str | None = None  # bundle_digest() of the bundle it was loaded from

    @classmethod
    def load(cls, bundle: str | Path, provider: str = "auto", threads: int = 1, seed: int | None = None,
             bind_io: bool | None = None, expect_digest: str | None = None, expect_task: str | None = None,
             expect_dims: tuple[int, int] | None = None) -> "PolicyRuntime":
        """bind_io: run through fixed device buffers (default: on CUDA, where each graph and batch
        size gets its own session with CUDA-graph capture; on CPU plain run() is faster).
        expect_digest / expect_task / expect_dims (obs_dim, act_dim): refuse any other bundle."""
        import onnxruntime as ort

        bundle = Path(bundle)
        manifest, digest = _read_manifest(bundle)
        if expect_digest is not None and digest != expect_digest.strip().lower():
            raise BundleError(f"{bundle}: digest: expected {expect_digest}, got {digest} (another bundle, "
                              f"or this one re-exported)")
        if expect_task is not None and manifest["task"] != expect_task:
            raise BundleError(f"{bundle}: task: the bundle is for {manifest['task']}, expected {expect_task}")
        dims = (manifest["obs_dim"], manifest["act_dim"])
        if expect_dims is not None and dims != tuple(expect_dims):
            raise BundleError(f"{bundle}: obs_dim/act_dim: the bundle has {dims[0]}/{dims[1]}, expected "
                              f"{expect_dims[0]}/{expect_dims[1]}")
        providers = resolve_providers(provider)
        so = ort.SessionOptions()
        # Latency over throughput: one thread, sequential, all graph optimisations.
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        on_cuda = providers[0] == "CUDAExecutionProvider"

        def open_session(key: str, graph_capture: bool = False):
            path = bundle / manifest["files"][key]["path"]
            provs = [("CUDAExecutionProvider", {"enable_cuda_graph": "1"}), "CPUExecutionProvider"] \
                if graph_capture else providers
            try:
                return ort.InferenceSession(str(path), so, providers=provs)
            except Exception as exc:
                raise BundleError(f"{path}: ONNX Runtime cannot load it ({exc})") from None

        sessions = {key: open_session(key) for key in _FILES}
        factory = (lambda key: open_session(key, graph_capture=True)) if on_cuda else None
        rt = cls(manifest, sessions, providers, seed, on_cuda if bind_io is None else bind_io, factory,
                 "cuda" if on_cuda else "cpu")
        rt.digest = digest
        rt._check_shapes(bundle)
        rt._probe(bundle)
        return rt

    def _run(self, key: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not self.bind_io:
            return self.sessions[key].run(None, feeds)
        slot = (key, feeds["observation"].shape[0])
        runner = self._runners.get(slot)
        if runner is None:  # CUDA graphs need fixed shapes: one captured session per batch size
            session = self._session_factory(key) if self._session_factory else self.sessions[key]
            runner = self._runners[slot] = _BoundRunner(session, feeds, self._device)
        return runner.run(feeds)

    def _check_shapes(self, bundle: Path) -> None:
        want = {"observation": self.obs_dim, "initial_latent": self.act_dim, "action": self.act_dim}
        for key, sess in self.sessions.items():
            for arg in [*sess.get_inputs(), *sess.get_outputs()]:
                if arg.name in want and arg.shape[-1] != want[arg.name]:
                    raise BundleError(f"{bundle / self.manifest['files'][key]['path']}: {arg.name} has "
                                      f"{arg.shape[-1]} features, manifest.yaml says {want[arg.name]}")

    def _probe(self, bundle: Path) -> None:
        """Run each graph once on a plain input: NaN / Inf weights (which no hash catches: they
        were exported as trained) show up as a non-finite output here, not on the robot."""
        b = self.manifest.get("batch")
        b = b if isinstance(b, int) else 1
        obs, zeros = np.zeros((b, self.obs_dim), np.float32), np.zeros((b, self.act_dim), np.float32)
        chain = {"observation": obs, "initial_latent": zeros,
                 "step_noise": np.zeros((self.steps, b, self.act_dim), np.float32)}
        lam = np.array([self.lagrange_multiplier], np.float32)
        feeds = {"denoiser_unguided": chain,
                 "denoiser": {**chain, "lagrange_multiplier": lam, "guidance_scale": np.zeros(1, np.float32)},
                 "critics": {"observation": obs, "action": np.tile(self.centre, (b, 1)), "lagrange_multiplier": lam}}
        for key, feed in feeds.items():
            if not all(np.isfinite(out).all() for out in self.sessions[key].run(None, feed)):
                raise BundleError(f"{bundle / self.manifest['files'][key]['path']}: non-finite output on a probe "
                                  f"input (non-finite weights?)")

    @property
    def provider(self) -> str:
        return self.sessions["denoiser_unguided"].get_providers()[0]

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
