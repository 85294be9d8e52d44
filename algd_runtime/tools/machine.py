"""What a figure was measured on: the CPU's model and bf16 flags, the cores, torch's threads."""

from __future__ import annotations

import os
import platform

# The CPU features that decide bf16 speed: AMX tiles, AVX512-BF16 dot products, or neither
# (then bf16 is emulated and slower than fp32).
BF16_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")


def _cpuinfo(key: str) -> str | None:
    """The first `key: value` line's value in /proc/cpuinfo (Linux; None elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    return _cpuinfo("model name") or platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The CPU's flags among BF16_FLAGS."""
    flags = (_cpuinfo("flags") or "").split()
    return [f for f in BF16_FLAGS if f in flags]


def python_speed(loops: int = 1_000_000, repeats: int = 3) -> float:
    """Million iterations a second of a bare Python loop, the best of `repeats`: the nodes'
    cost per message is mostly the interpreter's (rclpy's executor), so this, not the CPU's
    name, is what moves `algd-bench loop` between machines (and on a shared VM, between days)."""
    import time

    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            pass
        best = min(best, time.perf_counter() - start)
    return loops / best / 1e6


def machine_line(device: str) -> str:
    import torch

    return (f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), device {device}")
