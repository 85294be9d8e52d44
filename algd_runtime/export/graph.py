"""A small ONNX graph builder and the emitters for ALGD's networks, written with plain ops.

Everything is unrolled: no Loop, If or Scan, so ONNX Runtime sees one static graph (the
batch is the only free dimension) that it can fuse and capture as a CUDA graph. The critic
gradients are written out analytically (backprop through ReLU / SiLU MLPs by hand).
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphBuilder:
    """Collects nodes and constant initialisers; `op` returns the name of its output."""

    def __init__(self, name: str):
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._ids = itertools.count()

    def _fresh(self, hint: str) -> str:
        return f"{hint}_{next(self._ids)}"

    def const(self, value, hint: str = "c") -> str:
        name = self._fresh(hint)
        arr = np.asarray(value)
        arr = arr.astype(np.int64 if arr.dtype.kind in "iu" else np.float32)
        self.initializers.append(numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, *inputs: str, hint: str | None = None, **attrs) -> str:
        out = self._fresh(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def input(self, name: str, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        return name

    def output(self, value: str, name: str, shape: list) -> None:
        self.nodes.append(helper.make_node("Identity", [value], [name]))
        self.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))

    def model(self, opset: int, doc: str = "") -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                  producer_name="algd-export", doc_string=doc)
        model.ir_version = min(model.ir_version, 9)  # readable by ONNX Runtime >= 1.17
        return model

    # -- small helpers for the emitters ------------------------------------------------
    def linear(self, x: str, weight: str, bias: str) -> str:
        """x @ weight.T + bias, for constants in torch's Linear layout weight [out, in]."""
        return self.op("Gemm", x, weight, bias, transB=1)

    def sum_axis(self, x: str, axis: int, keepdims: int = 1) -> str:
        return self.op("ReduceSum", x, self.const(np.array([axis], np.int64)), keepdims=keepdims)


def _np(sd: dict, key: str) -> np.ndarray:
    return sd[key].detach().cpu().numpy().astype(np.float32)


class DenoiserEmitter:
    """The score / eps MLP, split so the observation part is computed once per chain:
    first layer = obs @ Ws^T + a @ Wa^T + (emb_k @ We^T + b0)."""

    def __init__(self, g: GraphBuilder, sd: dict, obs_dim: int, act_dim: int):
        self.g = g
        w0 = _np(sd, "mlp.0.weight")
        w_emb, b0, emb = w0[:, obs_dim + act_dim:], _np(sd, "mlp.0.bias"), _np(sd, "time_embedding.weight")
        # Each constant is stored once and shared by the K unrolled steps.
        self.w_obs_t = g.const(np.ascontiguousarray(w0[:, :obs_dim].T), "w_obs")
        self.w_act_t = g.const(np.ascontiguousarray(w0[:, obs_dim:obs_dim + act_dim].T), "w_act")
        self.step_bias = [g.const(emb[k] @ w_emb.T + b0, f"step_bias{k}") for k in range(emb.shape[0])]
        self.layers = [(g.const(_np(sd, f"mlp.{i}.weight")), g.const(_np(sd, f"mlp.{i}.bias"))) for i in (2, 4)]
        self.heads = {h: (g.const(_np(sd, f"{h}_head.weight")), g.const(_np(sd, f"{h}_head.bias")))
                      for h in ("score", "eps")}

    def obs_part(self, obs: str) -> str:
        return self.g.op("MatMul", obs, self.w_obs_t)

    def __call__(self, obs_part: str, x: str, k: int, head: str) -> str:
        g = self.g
        h = g.op("Relu", g.op("Add", g.op("Add", obs_part, g.op("MatMul", x, self.w_act_t)), self.step_bias[k]))
        for w, b in self.layers:
            h = g.op("Relu", g.linear(h, w, b))
        return g.linear(h, *self.heads[head])


class EnergyEmitter:
    """Q_min, Qc mean / risk, L_A and grad_a L_A of the critics, as plain ops.

    The twin Q (ReLU) and the cost ensemble (SiLU) are both stacks of 2-hidden-layer MLPs,
    evaluated as batched matmuls [S, B, H]; the observation's share of the first layer is
    computed once per chain (`prepare`), since only the action changes between steps.
    """

    def __init__(self, g: GraphBuilder, critic_sd: dict, cost_sd: dict, obs_dim: int, h: float,
                 rho: float, risk_k: float):
        self.g, self.h, self.rho, self.k = g, h, rho, risk_k
        # Twin Q in the ensemble's layout: weights [S, in, out], biases [S, out].
        tq = lambda i: np.stack([_np(critic_sd, f"linear{i + j}.weight").T for j in (0, 3)])  # noqa: E731
        tb = lambda i: np.stack([_np(critic_sd, f"linear{i + j}.bias") for j in (0, 3)])  # noqa: E731
        self.q = self._stack(g, [(tq(i), tb(i)) for i in (1, 2, 3)], obs_dim)
        self.c = self._stack(g, [(_np(cost_sd, f"nn{i}.weight"), _np(cost_sd, f"nn{i}.bias")) for i in (1, 2, 3)],
                             obs_dim)
        self.members = int(self.c["size"])
        self.one = g.const(np.float32(1.0))

    @staticmethod
    def _stack(g: GraphBuilder, layers, obs_dim: int) -> dict:
        (w1, b1), (w2, b2), (w3, b3) = layers
        return {"size": w1.shape[0], "w1_obs": w1[:, :obs_dim, :], "b1": b1[:, None, :],
                "w1_act": g.const(np.ascontiguousarray(w1[:, obs_dim:, :])),
                "w2": g.const(w2), "b2": g.const(b2[:, None, :]), "w3": g.const(w3), "b3": g.const(b3[:, None, :]),
                "w3_t": g.const(np.transpose(w3, (0, 2, 1))), "w2_t": g.const(np.transpose(w2, (0, 2, 1))),
                "w1_act_t": g.const(np.ascontiguousarray(np.transpose(w1[:, obs_dim:, :], (0, 2, 1))))}

    def prepare(self, obs: str) -> dict[str, str]:
        """The observation's share of each stack's first layer (bias included), [S, B, H]."""
        g = self.g
        return {name: g.op("Add", g.op("MatMul", obs, g.const(p["w1_obs"])), g.const(p["b1"]))
                for name, p in (("q", self.q), ("c", self.c))}

    def _activation(self, z: str, kind: str) -> tuple[str, str]:
        """Activation and its slope at z."""
        g = self.g
        if kind == "relu":
            h = g.op("Relu", z)
            return h, g.op("Sign", h)  # 1 where z > 0, else 0 (as torch's ReLU backward)
        s = g.op("Sigmoid", z)
        slope = g.op("Mul", s, g.op("Add", self.one, g.op("Mul", z, g.op("Sub", self.one, s))))
        return g.op("Mul", z, s), slope

    def _stacked(self, obs_part: str, action: str, p: dict, kind: str) -> tuple[str, str]:
        """Values [S, B, 1] and action gradients [S, B, act] of a stack of MLPs."""
        g = self.g
        h1, d1 = self._activation(g.op("Add", obs_part, g.op("MatMul", action, p["w1_act"])), kind)
        h2, d2 = self._activation(g.op("Add", g.op("MatMul", h1, p["w2"]), p["b2"]), kind)
        value = g.op("Add", g.op("MatMul", h2, p["w3"]), p["b3"])
        g1 = g.op("Mul", d1, g.op("MatMul", g.op("Mul", d2, p["w3_t"]), p["w2_t"]))
        return value, g.op("MatMul", g1, p["w1_act_t"])

    def __call__(self, obs: str, action: str, lam: str, parts: dict[str, str] | None = None) -> dict[str, str]:
        g = self.g
        parts = parts or self.prepare(obs)
        q, grad_q_all = self._stacked(parts["q"], action, self.q, "relu")
        first = lambda x, i: g.op("Gather", x, g.const(np.array(i, np.int64)), axis=0)  # noqa: E731
        q1, q2 = first(q, 0), first(q, 1)
        q_min = g.op("Min", q1, q2)
        grad_q = g.op("Where", g.op("LessOrEqual", q1, q2), first(grad_q_all, 0), first(grad_q_all, 1))
        qc, grad_c = self._stacked(parts["c"], action, self.c, "silu")
        m = float(self.members)
        mean = g.op("Div", g.sum_axis(qc, 0, keepdims=0), g.const(np.float32(m)))
        mean_g = g.op("Div", g.sum_axis(grad_c, 0, keepdims=0), g.const(np.float32(m)))
        if self.members > 1:
            dev = g.op("Sub", qc, mean)
            std = g.op("Sqrt", g.op("Div", g.sum_axis(g.op("Mul", dev, dev), 0, keepdims=0),
                                     g.const(np.float32(m - 1))))
            risk = g.op("Add", mean, g.op("Mul", g.const(np.float32(self.k)), std))
            # d std / d a = sum_j (qc_j - mean) grad_j / ((M - 1) std); guarded at std = 0.
            d_std = g.op("Div", g.sum_axis(g.op("Mul", dev, grad_c), 0, keepdims=0),
                         g.op("Mul", g.const(np.float32(m - 1)), g.op("Max", std, g.const(np.float32(1e-12)))))
            grad_risk = g.op("Add", mean_g, g.op("Mul", g.const(np.float32(self.k)), d_std))
        else:
            risk, grad_risk = mean, mean_g
        active = g.op("Relu", g.op("Add", lam, g.op("Mul", g.const(np.float32(self.rho)),
                                                     g.op("Sub", risk, g.const(np.float32(self.h))))))
        penalty = g.op("Div", g.op("Sub", g.op("Mul", active, active), g.op("Mul", lam, lam)),
                       g.const(np.float32(2.0 * self.rho)))
        energy = g.op("Sub", penalty, q_min)
        grad = g.op("Sub", g.op("Mul", active, grad_risk), grad_q)
        return {"q_min": q_min, "qc_mean": mean, "qc_risk": risk, "energy": energy, "grad": grad}
