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
    """Q_min, Qc mean / risk, L_A and grad_a L_A of the critics, as plain ops."""

    def __init__(self, g: GraphBuilder, critic_sd: dict, cost_sd: dict, obs_dim: int, h: float,
                 rho: float, risk_k: float):
        self.g, self.h, self.rho, self.k = g, h, rho, risk_k
        # Constants created once: the guided chain evaluates the energy at every step.
        self.q = []
        for idx in ((1, 2, 3), (4, 5, 6)):
            (w1, b1), (w2, b2), (w3, b3) = [(_np(critic_sd, f"linear{i}.weight"), _np(critic_sd, f"linear{i}.bias"))
                                            for i in idx]
            self.q.append({"w1": g.const(w1), "b1": g.const(b1), "w2": g.const(w2), "b2": g.const(b2),
                           "w3": g.const(w3), "b3": g.const(b3),
                           "w1_act": g.const(np.ascontiguousarray(w1[:, obs_dim:]))})
        (w1, b1), (w2, b2), (w3, b3) = [(_np(cost_sd, f"nn{i}.weight"), _np(cost_sd, f"nn{i}.bias")) for i in (1, 2, 3)]
        self.members = w1.shape[0]
        self.c = {"w1": g.const(w1), "b1": g.const(b1[:, None, :]), "w2": g.const(w2), "b2": g.const(b2[:, None, :]),
                  "w3": g.const(w3), "b3": g.const(b3[:, None, :]),
                  "w3_t": g.const(np.transpose(w3, (0, 2, 1))), "w2_t": g.const(np.transpose(w2, (0, 2, 1))),
                  "w1_act_t": g.const(np.ascontiguousarray(np.transpose(w1[:, obs_dim:, :], (0, 2, 1))))}
        self.one, self.zero = g.const(np.float32(1.0)), g.const(np.float32(0.0))

    def _q_head(self, xu: str, p: dict) -> tuple[str, str]:
        """One ReLU Q net: value [B, 1] and its gradient w.r.t. the action [B, act]."""
        g = self.g
        z1 = g.linear(xu, p["w1"], p["b1"])
        z2 = g.linear(g.op("Relu", z1), p["w2"], p["b2"])
        q = g.linear(g.op("Relu", z2), p["w3"], p["b3"])
        g2 = g.op("Mul", self._relu_mask(z2), p["w3"])  # [B, H] * [1, H]
        g1 = g.op("Mul", self._relu_mask(z1), g.op("MatMul", g2, p["w2"]))
        return q, g.op("MatMul", g1, p["w1_act"])

    def _relu_mask(self, z: str) -> str:
        return self.g.op("Cast", self.g.op("Greater", z, self.zero), to=TensorProto.FLOAT)

    def _silu_and_slope(self, z: str) -> tuple[str, str]:
        g = self.g
        s = g.op("Sigmoid", z)
        one = self.one
        slope = g.op("Mul", s, g.op("Add", one, g.op("Mul", z, g.op("Sub", one, s))))
        return g.op("Mul", z, s), slope

    def _cost_ensemble(self, xu: str) -> tuple[str, str]:
        """Members' values [M, B, 1] and action gradients [M, B, act]."""
        g, c = self.g, self.c  # weights [M, in, out], biases [M, 1, out]
        z1 = g.op("Add", g.op("MatMul", xu, c["w1"]), c["b1"])
        a1, d1 = self._silu_and_slope(z1)
        z2 = g.op("Add", g.op("MatMul", a1, c["w2"]), c["b2"])
        a2, d2 = self._silu_and_slope(z2)
        qc = g.op("Add", g.op("MatMul", a2, c["w3"]), c["b3"])
        g2 = g.op("Mul", d2, c["w3_t"])  # [M, B, H] * [M, 1, H]
        g1 = g.op("Mul", d1, g.op("MatMul", g2, c["w2_t"]))
        return qc, g.op("MatMul", g1, c["w1_act_t"])

    def __call__(self, obs: str, action: str, lam: str) -> dict[str, str]:
        g = self.g
        xu = g.op("Concat", obs, action, axis=1)
        (q1, g1), (q2, g2) = (self._q_head(xu, p) for p in self.q)
        q_min = g.op("Min", q1, q2)
        grad_q = g.op("Where", g.op("LessOrEqual", q1, q2), g1, g2)
        qc, grad_c = self._cost_ensemble(xu)
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
