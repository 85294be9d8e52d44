"""A bundle's ONNX Runtime sessions: the providers (CPU, CUDA, TensorRT), one session per
model, a check of their shapes against the manifest, a probe run (non-finite weights show up
here, not on the robot), and IO binding to fixed device buffers (CUDA graphs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from algd_runtime.contract.bundle import MODEL_FILES, BundleError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


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


class BoundRunner:
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


class ModelSessions:
    """The three models of a bundle (denoiser, denoiser_unguided, critics) as ONNX Runtime
    sessions; `run` feeds one of them."""

    def __init__(self, sessions: dict, providers: list, bind_io: bool = False, session_factory=None,
                 device: str = "cpu"):
        self.sessions, self.providers = sessions, providers
        self.bind_io, self._session_factory, self._device = bind_io, session_factory, device
        self._runners: dict[tuple[str, int], BoundRunner] = {}

    @classmethod
    def open(cls, bundle: Path, manifest: dict, provider: str = "auto", threads: int = 1,
             bind_io: bool | None = None) -> "ModelSessions":
        import onnxruntime as ort

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

        sessions = {key: open_session(key) for key in MODEL_FILES}
        factory = (lambda key: open_session(key, graph_capture=True)) if on_cuda else None
        models = cls(sessions, providers, on_cuda if bind_io is None else bind_io, factory, "cuda" if on_cuda else "cpu")
        models.check_shapes(bundle, manifest)
        models.probe(bundle, manifest)
        return models

    def run(self, key: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not self.bind_io:
            return self.sessions[key].run(None, feeds)
        slot = (key, feeds["observation"].shape[0])
        runner = self._runners.get(slot)
        if runner is None:  # CUDA graphs need fixed shapes: one captured session per batch size
            session = self._session_factory(key) if self._session_factory else self.sessions[key]
            runner = self._runners[slot] = BoundRunner(session, feeds, self._device)
        return runner.run(feeds)

    def check_shapes(self, bundle: Path, manifest: dict) -> None:
        obs_dim, act_dim = int(manifest["obs_dim"]), int(manifest["act_dim"])
        want = {"observation": obs_dim, "initial_latent": act_dim, "action": act_dim}
        for key, sess in self.sessions.items():
            for arg in [*sess.get_inputs(), *sess.get_outputs()]:
                if arg.name in want and arg.shape[-1] != want[arg.name]:
                    raise BundleError(f"{bundle / manifest['files'][key]['path']}: {arg.name} has "
                                      f"{arg.shape[-1]} features, manifest.yaml says {want[arg.name]}")

    def probe(self, bundle: Path, manifest: dict) -> None:
        """Run each graph once on a plain input: NaN / Inf weights (which no hash catches: they
        were exported as trained) show up as a non-finite output here, not on the robot."""
        b = manifest.get("batch")
        b = b if isinstance(b, int) else 1
        obs_dim, act_dim, steps = int(manifest["obs_dim"]), int(manifest["act_dim"]), int(manifest["schedule"]["steps"])
        low, high = np.asarray(manifest["act_low"], np.float32), np.asarray(manifest["act_high"], np.float32)
        obs, zeros = np.zeros((b, obs_dim), np.float32), np.zeros((b, act_dim), np.float32)
        chain = {"observation": obs, "initial_latent": zeros, "step_noise": np.zeros((steps, b, act_dim), np.float32)}
        lam = np.array([float(manifest["lagrange_multiplier"])], np.float32)
        feeds = {"denoiser_unguided": chain,
                 "denoiser": {**chain, "lagrange_multiplier": lam, "guidance_scale": np.zeros(1, np.float32)},
                 "critics": {"observation": obs, "action": np.tile((low + high) / 2, (b, 1)), "lagrange_multiplier": lam}}
        for key, feed in feeds.items():
            if not all(np.isfinite(out).all() for out in self.sessions[key].run(None, feed)):
                raise BundleError(f"{bundle / manifest['files'][key]['path']}: non-finite output on a probe "
                                  f"input (non-finite weights?)")

    @property
    def provider(self) -> str:
        return self.sessions["denoiser_unguided"].get_providers()[0]
