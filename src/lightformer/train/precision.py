"""Which float format training autocasts to: ``bf16 = "auto"`` means bf16 only where the hardware multiplies bf16
natively, fp32 elsewhere.

bf16 autocast is a speed choice, and on a CPU without bf16 instructions it is the slow choice: on an AVX2-only
AMD EPYC host (no AVX-512 BF16, no AMX), a ``[1024, 512] x [512, 1536]`` matmul ran at 19 GFLOP/s in fp32 and
0.31 GFLOP/s in bf16 (one thread, torch 2.13), 60x slower, while on AMX hosts bf16 runs ~4x faster than fp32. A
recipe that hard-codes bf16 turns a 5-minute capacity cell into hours on the first kind of machine.
"""

from __future__ import annotations

import functools

import torch

#: CPU feature flags (``/proc/cpuinfo``) of native bf16 matmuls: x86 AMX and AVX-512 BF16, aarch64 BF16
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "bf16"})


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """True when ``device`` multiplies bf16 natively: CUDA with bf16 support, a CPU with one of
    ``BF16_CPU_FLAGS``. Unknown (no ``/proc/cpuinfo``) counts as False."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        return bool(_cpu_flags() & BF16_CPU_FLAGS)
    return False


def resolve_bf16(setting: bool | str, device: torch.device | str = "cpu") -> bool:
    """``True``/``False`` as given; ``"auto"`` -> ``native_bf16(device)``.

    Raises:
        ValueError: a setting other than True, False or "auto", naming ``bf16``.
    """
    if setting is True or setting is False:
        return setting
    if setting == "auto":
        return native_bf16(device)
    raise ValueError(f"bf16 must be true, false or 'auto', got {setting!r}")
