"""Which number format the networks compute in: fp32, or bf16 with fp32 master weights.

bf16 pays where the hardware has bf16 dot products (x86 AMX or AVX512-BF16, a CUDA GPU of
compute capability 8.0 or later); elsewhere it is emulated and slower than fp32, so "auto"
picks fp32 there. `resolve` says which and why; trainers log it.
"""

from __future__ import annotations

import contextlib

import torch

from algd_runtime.tools.machine import cpu_flags

PRECISIONS = ("fp32", "bf16", "auto")
_NATIVE_BF16 = ("amx_bf16", "avx512_bf16")


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether the device computes bf16 natively, and the evidence."""
    if device.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        return ok, f"CUDA {torch.cuda.get_device_name(device) if torch.cuda.is_available() else 'absent'}"
    have = [f for f in cpu_flags() if f in _NATIVE_BF16]
    return bool(have), (f"CPU has {', '.join(have)}" if have else f"CPU has none of {', '.join(_NATIVE_BF16)}")


def resolve(precision: str, device: torch.device) -> tuple[torch.dtype, str]:
    """The dtype the networks compute in, and why (for the run's log)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return torch.float32, "fp32 (configured)"
    native, why = native_bf16(device)
    if precision == "bf16":
        return torch.bfloat16, "bf16 (configured" + ("" if native else f"; emulated, slower than fp32: {why}") + ")"
    return (torch.bfloat16, f"bf16 (auto: {why})") if native else (torch.float32, f"fp32 (auto: {why})")


def compute_in(dtype: torch.dtype, device: torch.device):
    """The context a gradient step runs in: autocast to bf16 (fp32 weights, optimiser state
    and losses; torch's autocast keeps reductions such as mse_loss in fp32), or nothing."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
