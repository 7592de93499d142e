"""Bit packing of low-bit codes: b-bit codes, most significant bit first, in a uint8 stream.

Two 4-bit codes share a byte (the first in the high nibble); 6-bit codes take 3 bytes per 4 codes; 8-bit
codes are bytes. ``unpack_codes(pack_codes(c, b), b, c.numel())`` returns ``c`` exactly.

``pack_nibbles`` / ``unpack_nibbles`` are the torch-native 4-bit case (same byte layout, on any device), what
quantized layers hold in memory and decode at every forward.
"""

from __future__ import annotations

import numpy as np
import torch


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 tensor of ceil(n bits / 8) bytes holding the n codes (each in [0, 2^bits))."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must lie in 1..8, got {bits}")
    flat = codes.reshape(-1).to(torch.int64).cpu()
    if flat.numel() and (flat.min() < 0 or flat.max() >= 2**bits):
        raise ValueError(f"codes must lie in [0, {2 ** bits}) for {bits}-bit packing")
    shifts = np.arange(bits - 1, -1, -1)
    bit_array = ((flat.numpy()[:, None] >> shifts) & 1).astype(np.uint8)
    return torch.from_numpy(np.packbits(bit_array.reshape(-1)))


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The first ``count`` ``bits``-bit codes (int32) of a packed uint8 stream."""
    if packed.dtype != torch.uint8 or packed.numel() * 8 < bits * count:
        raise ValueError(f"packed data must be uint8 with at least {bits * count} bits")
    bit_array = np.unpackbits(packed.cpu().numpy())[: bits * count].reshape(count, bits).astype(np.int32)
    return torch.from_numpy((bit_array << np.arange(bits - 1, -1, -1)).sum(1).astype(np.int32))


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """4-bit codes (each in [0, 16)) two per byte, the first in the high nibble: ceil(n / 2) uint8."""
    flat = codes.reshape(-1).to(torch.int32)
    if flat.numel() and (flat.min() < 0 or flat.max() > 15):
        raise ValueError("codes must lie in [0, 16) for 4-bit packing")
    flat = torch.nn.functional.pad(flat, (0, flat.numel() % 2))
    return ((flat[0::2] << 4) | flat[1::2]).to(torch.uint8)


def unpack_nibbles(packed: torch.Tensor, count: int) -> torch.Tensor:
    """The first ``count`` 4-bit codes (int32) of ``pack_nibbles``' bytes."""
    if packed.dtype != torch.uint8 or packed.numel() * 2 < count:
        raise ValueError(f"packed data must be uint8 with at least {count} nibbles")
    bytes_ = packed.to(torch.int32)
    return torch.stack([bytes_ >> 4, bytes_ & 15], dim=1).reshape(-1)[:count]
