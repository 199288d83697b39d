"""A profile's CPU precision: ``bf16 = "auto"`` runs bfloat16 only where the CPU has it in hardware.

Without avx512_bf16 or AMX, torch emulates bfloat16 and a training step is far slower than in
fp32 (measured on an AVX2-only AMD EPYC, 2 threads: a 2048^2 product at 0.3 GFLOP/s in bf16
against 73 in fp32; a 3x3 convolution under bf16 autocast over a hundred times slower).
torch is imported only when the CPU is probed, so the runner stays light.
"""

from __future__ import annotations

from .errors import ConfigError


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (avx512_bf16 or AMX tiles)."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: assume none
        return False


def resolve_bf16(value: bool | str) -> bool:
    """A profile's ``bf16``: true, false, or ``"auto"`` (:func:`native_bf16`). The runner resolves
    it before a stage runs, so the artifact keys hold the precision that ran."""
    if isinstance(value, bool):
        return value
    if value == "auto":
        return native_bf16()
    raise ConfigError(f"bf16 must be true, false or 'auto', got {value!r}")
