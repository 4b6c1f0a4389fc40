"""Fitting foreign arrays into a Flax parameter tree: the one layout transpose (OIHW -> HWIO),
the shapes a Flax module expects, and the check that a converted tree fills them exactly."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

Shape = tuple[int, ...]
# Flax name ('refine/enc_conv1/kernel') -> (the source file's key, the array in Flax layout).
Found = Mapping[str, tuple[str, np.ndarray]]

_LISTED = 8  # names shown per kind of mismatch in an error


class ConversionError(ValueError):
    """A foreign weights file cannot be read, or does not match the network it is converted into."""


def oihw_to_hwio(weight: np.ndarray) -> np.ndarray:
    """A PyTorch convolution weight [out, in, kh, kw] as a Flax kernel [kh, kw, in, out]."""
    weight = np.asarray(weight)
    if weight.ndim != 4:
        raise ConversionError(f"a convolution weight has 4 axes (OIHW), got shape {weight.shape}")
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0))


def variable_shapes(module: nn.Module, *input_shapes: Shape) -> dict[str, dict[str, Shape]]:
    """Collection -> {'/'-joined name: shape} of `module.init` on float32 inputs of these
    shapes, traced abstractly (nothing is computed)."""
    inputs = [jax.ShapeDtypeStruct(shape, jnp.float32) for shape in input_shapes]
    abstract = jax.eval_shape(module.init, jax.random.key(0), *inputs)
    return {
        collection: {
            name: tuple(leaf.shape)
            for name, leaf in traverse_util.flatten_dict(tree, sep="/").items()
        }
        for collection, tree in abstract.items()
    }


def _listing(label: str, items: list[str]) -> str:
    more = ", ..." if len(items) > _LISTED else ""
    return f"{label} ({len(items)}): {', '.join(items[:_LISTED])}{more}"


def fill_params(
    expected: Mapping[str, Shape], found: Found, what: str, unmapped: Iterable[str] = ()
) -> dict[str, Any]:
    """The nested float32 tree of `found`, if it fills `expected` exactly.

    Args:
      expected: '/'-joined Flax name -> shape (see `variable_shapes`).
      found: Flax name -> (source key, array already in Flax layout).
      what: the source, for the error message ("generator state dict").
      unmapped: source keys that name no Flax parameter.

    Raises ConversionError naming every missing parameter, every unexpected source key
    (`unmapped`, and those mapped to a name outside `expected`) and every mis-shaped array.
    """
    missing = sorted(name for name in expected if name not in found)
    unexpected = sorted(
        [*unmapped, *(key for name, (key, _) in found.items() if name not in expected)]
    )
    wrong = sorted(
        f"{key} -> {name}: expected {tuple(expected[name])}, got {array.shape}"
        for name, (key, array) in found.items()
        if name in expected and array.shape != tuple(expected[name])
    )
    problems = [
        _listing(label, items)
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong),
        )
        if items
    ]
    if problems:
        raise ConversionError(f"{what} does not match the network: " + "; ".join(problems))
    flat = {name: found[name][1].astype(np.float32) for name in expected}
    return traverse_util.unflatten_dict(flat, sep="/")
