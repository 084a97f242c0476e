"""A quantized tensor's arithmetic: real values to its integers and back (numpy only)."""

from __future__ import annotations

from typing import Optional

import numpy as np


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    """Real values to a tensor's integer type: ``round(x / scale) + zero_point``, clipped.

    Args:
      x: real values.
      scale, zero_point: the tensor's quantization.
      dtype: the integer type (np.uint8, np.int8).

    Returns:
      ``x`` quantized, of ``dtype``.
    """
    info = np.iinfo(dtype)
    q = np.round(x / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """A tensor's integers to real values: ``scale * (q - zero_point)``.

    Args:
      q: the integers.
      scale, zero_point: the tensor's quantization.

    Returns:
      float32 values of ``q``'s shape.
    """
    return (scale * (q.astype(np.int64) - zero_point)).astype(np.float32)


def dequantize_table(dtype: np.dtype, scale: float, zero_point: int) -> Optional[np.ndarray]:
    """Every value of an 8-bit tensor, dequantized, indexed by its byte: ``table[q.view(
    np.uint8)]`` equals ``dequantize(q, scale, zero_point)``.

    Args:
      dtype: the tensor's dtype.
      scale, zero_point: its quantization.

    Returns:
      float32 (256,), or None for a dtype that is not uint8 or int8.
    """
    if np.dtype(dtype) not in (np.uint8, np.int8):
        return None
    return dequantize(np.arange(256, dtype=np.uint8).view(dtype), scale, zero_point)
