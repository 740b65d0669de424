"""Validation of MNIST-style pixel values (28x28 or 784 numbers 0-255, light ink on dark) sent by a client.

Pixel values are used as they are, so anything that is not already MNIST-like is refused with a one-line
``InputError``, not guessed at. Needs numpy only.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from digits.serve.decode import InputError

SIZE = 28  # MNIST's frame


def check_mnist_arrays(values: Any) -> np.ndarray:
    """Validate MNIST-style pixel values and return them as uint8 (N, 28, 28).

    ``values``: shape (N, 28, 28) or (N, 784), numbers from 0 to 255 (MNIST's scale; fractions are rounded),
    light ink on a dark background (MNIST's polarity). Values that look like the 0-1 scale, inverted images,
    strings, booleans, NaN and infinity are rejected, not guessed at.
    """
    if len(values) == 0:
        raise InputError("empty batch: send at least one image")
    array = _pixel_array(values)
    problem = _pixel_problem(array)
    if problem:
        raise InputError(f"image {problem[0]}: {problem[1]}")
    return np.rint(array).astype(np.uint8)


def check_array_items(items: Sequence[Any], indices: list[int]) -> np.ndarray:
    """Validate the pixel-value items at ``indices``: one vectorised pass when they share a shape (the usual case)."""
    try:
        array = _pixel_array([items[i] for i in indices])
    except InputError:
        array = None
    if array is None:  # one by one: names the first bad item, and allows 28x28 and 784 values in one request
        parts = []
        for i in indices:
            try:
                parts.append(_pixel_array([items[i]]))
            except InputError as exc:
                raise InputError(f"image {i}: {exc}") from None
        array = np.concatenate(parts)
    problem = _pixel_problem(array)
    if problem:
        raise InputError(f"image {indices[problem[0]]}: {problem[1]}")
    return np.rint(array).astype(np.uint8)


def _pixel_array(values: Any) -> np.ndarray:
    """Float32 (N, 28, 28) from (N, 28, 28) or (N, 784) numbers; shape and type errors raised, values not checked."""
    array = numeric_array(values, "pixel values")
    if array.ndim == 2 and array.shape[1] == SIZE * SIZE:
        array = array.reshape(-1, SIZE, SIZE)
    if array.ndim != 3 or array.shape[1:] != (SIZE, SIZE):
        got = array.shape[1:] if array.ndim >= 2 else array.shape
        raise InputError(f"expected 28x28 or 784 pixel values per image, got shape {got}")
    return array


def numeric_array(values: Any, what: str) -> np.ndarray:
    """Float32 array of ``values`` (numbers only: strings, booleans, ragged rows and nulls are refused); ``what`` names them in the error."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
        array = values
    else:
        try:
            array = np.asarray(values)  # let NumPy infer the type: asking for float would turn "1" and True into 1.0
        except (ValueError, TypeError):
            raise InputError(
                f"{what} must be a rectangular array of numbers from 0 to 255 (rows of different lengths, nulls, or values that are not numbers)"
            ) from None
        if array.dtype.kind == "O":
            array = _object_array(array, what)
        if array.dtype.kind == "b":
            raise InputError(f"{what} must be numbers from 0 to 255, got booleans")
        if array.dtype.kind in "USa":
            raise InputError(f"{what} must be numbers from 0 to 255, got strings")
        if array.dtype.kind not in "iuf":
            raise InputError(f"{what} must be numbers from 0 to 255, got {array.dtype}")
        if not isinstance(values, np.ndarray) and array.ndim and _has_bool(values, array.ndim):
            raise InputError(f"{what} must be numbers from 0 to 255, got booleans among them")
    if array.dtype == np.float64:
        # float32 would turn 1e300 into infinity, and the client would read "NaN or infinity" for a finite number.
        huge = np.isfinite(array) & (np.abs(array) > 1e30)
        if huge.any():
            raise InputError(f"{what} must be from 0 to 255, got {array[huge].flat[0]:g}")
    return array.astype(np.float32, copy=False)


def _object_array(array: np.ndarray, what: str) -> np.ndarray:
    # NumPy makes an object array of nested sequences of unequal length, or of arrays inside a list.
    try:
        stacked = np.stack([np.asarray(a) for a in array]) if array.ndim == 1 else None
    except (ValueError, TypeError):
        stacked = None
    if stacked is None or stacked.dtype.kind == "O":
        raise InputError(
            f"{what} must be a rectangular array of numbers from 0 to 255 (rows of different lengths, nulls, or values that are not numbers)"
        )
    return stacked


def _has_bool(values: Any, ndim: int) -> bool:
    # NumPy turns [1, True] into [1, 1] silently, and JSON's true/false arrive as Python bools: look for them,
    # in C loops (chain, map, set), as this runs over every pixel of every request.
    if isinstance(values, (list, tuple)) and all(isinstance(v, np.ndarray) for v in values):
        return any(v.dtype.kind == "b" for v in values)  # arrays carry their type: no need to visit each pixel
    flat = values
    for _ in range(ndim - 1):
        flat = itertools.chain.from_iterable(flat)
    return bool in set(map(type, flat))


def _pixel_problem(array: np.ndarray) -> tuple[int, str] | None:
    """The first image of ``array`` (float (N, 28, 28)) whose values are not MNIST-like, and what is wrong with it."""
    flat = array.reshape(len(array), -1)
    finite = np.isfinite(flat).all(axis=1)
    if not finite.all():
        return int(np.argmin(finite)), "pixel values must be finite numbers, got NaN or infinity"
    low, high = flat.min(axis=1), flat.max(axis=1)
    bad = (low < 0) | (high > 255)
    if bad.any():
        i = int(np.argmax(bad))
        return i, f"pixel values must be from 0 to 255, got {low[i]:g} to {high[i]:g}"
    if (high <= 1).any():
        return int(np.argmax(high <= 1)), (
            "all pixel values are at most 1: this endpoint expects MNIST's 0-255 scale, not 0-1 (multiply by 255), "
            "and a blank image has no digit"
        )
    edge = np.concatenate([array[:, 0], array[:, -1], array[:, 1:-1, 0], array[:, 1:-1, -1]], axis=1).mean(axis=1)
    if (edge > 127.5).any():
        i = int(np.argmax(edge > 127.5))
        return i, (
            f"the border is light (mean {edge[i]:.0f}): pixel values must be light ink on a dark background like "
            "MNIST (send 255 - x), or send the picture as a PNG/JPEG in the image column"
        )
    return None
