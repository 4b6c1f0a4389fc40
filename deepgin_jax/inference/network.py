"""The generator as a network function: `GeneratorForward` runs a DeepGIN's reconstruction,
compiled once per model configuration and input shape and shared by every instance (so several
`Inpainter`s of one architecture share their executables).

While the persistent compilation cache is on, the forward pass is traced once per model
configuration and input shape for every process: it is kept as serialized StableHLO beside the
cache (`deepgin_jax.trace_cache`), and a later process runs that, so that reading its compiled
program back costs no tracing of the Flax model.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from deepgin_jax import trace_cache
from deepgin_jax.models.generator import DeepGIN

# The network as a function: masked images [B, H, W, 3] float32 in [0, 1] with white holes and
# masks [B, H, W, 1] float32 (1 = hole) -> the reconstruction [B, H, W, 3] (reconst_img).
ForwardFn = Callable[[np.ndarray, np.ndarray], Any]


def forward_cache_size() -> int:
    """How many compiled forms of the generator's forward pass this process holds (one per
    model configuration and input shape)."""
    return _reconstruct._cache_size() + sum(f._cache_size() for f in _READ_BACK.values())


@functools.partial(jax.jit, static_argnums=0)
def _reconstruct(model: DeepGIN, variables: Any, masked: jax.Array, mask: jax.Array) -> jax.Array:
    return model.apply(variables, masked, mask).reconstructed


# The forward passes read back from `trace_cache` (or traced and kept there) in this process,
# by their file stem: jitted, so that each is compiled (or read from the compilation cache) once.
_READ_BACK: dict[str, Callable[..., jax.Array]] = {}
_NOT_EXPORTABLE: set[str] = set()  # run by `_reconstruct`, traced in every process


def _read_back(model: DeepGIN, variables: Any, masked: Any, mask: Any) -> Callable[..., jax.Array]:
    """The jitted forward pass of `model` at these inputs' shapes, run from its StableHLO in
    `trace_cache` (traced and kept there the first time)."""
    inputs = [trace_cache.abstract(x) for x in (masked, mask)]
    shapes = jax.tree.map(lambda v: (v.shape, str(v.dtype)), variables)
    stem = trace_cache.key("generator_forward", (trace_cache.module_fields(model), shapes, inputs))
    if stem in _NOT_EXPORTABLE:
        return functools.partial(_reconstruct, model)
    if (function := _READ_BACK.get(stem)) is None:
        try:
            program = trace_cache.exported(
                stem, jax.jit(functools.partial(_reconstruct, model)), (variables, *inputs)
            )
        except Exception as e:  # e.g. an operation that jax.export does not serialize
            logging.warning("The generator is traced in every process: cannot keep it (%s).", e)
            _NOT_EXPORTABLE.add(stem)
            return functools.partial(_reconstruct, model)

        def _reconstruct_exported(variables: Any, masked: jax.Array, mask: jax.Array):
            return program.call(variables, masked, mask)

        # Named as the traced function, so that compilation logs read the same either way.
        _reconstruct_exported.__name__ = "_reconstruct"
        function = _READ_BACK[stem] = jax.jit(_reconstruct_exported)
    return function


def _hashable(model: DeepGIN) -> DeepGIN:
    """The model with list-valued fields (as JSON metadata restores them) made tuples, so that
    it can be a static jit argument."""
    lists = {
        field.name: tuple(value)
        for field in dataclasses.fields(model)
        if isinstance(value := getattr(model, field.name, None), list)
    }
    return model.clone(**lists) if lists else model


class GeneratorForward:
    """A DeepGIN generator as a `ForwardFn` (its reconstruction), compiled once per model
    configuration and input shape for every instance.

    Args:
      model, variables: the generator and its variables.
      dtype: the computation dtype (e.g. jnp.bfloat16 on GPU), None for the model's; the
        parameters stay float32.
    """

    def __init__(
        self,
        model: DeepGIN,
        variables: Any,
        *,
        dtype: Any = None,
        recommended: dict[str, Any] | None = None,
    ):
        if dtype is not None and dtype != model.dtype:
            model = model.clone(dtype=dtype)
        self.model = _hashable(model)
        # device_put, not jnp.asarray: that compiles a conversion per parameter shape (~1 s).
        self._variables = jax.device_put(variables)
        self._read_back: dict[tuple, Callable[..., jax.Array]] = {}  # by input shapes
        # `Inpainter`'s defaults for this network: {"upscale": ..., "blend": ...}.
        self.recommended = dict(recommended or {})

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | os.PathLike | None, *, dtype: Any = jnp.float32
    ) -> GeneratorForward:
        """The generator `deepgin_jax.shipped.load_any_generator` reads from `checkpoint`
        (None: the shipped model); a shipped model's card gives the settings it is
        `recommended` to run with (`shipped.recommended_inference`)."""
        from deepgin_jax import shipped  # which reads its cards' settings with our options

        model, variables = shipped.load_any_generator(checkpoint, dtype=dtype)
        return cls(model, variables, recommended=shipped.recommended_inference(checkpoint))

    def __call__(self, masked: np.ndarray, mask: np.ndarray) -> jax.Array:
        if trace_cache.folder() is None:
            return _reconstruct(self.model, self._variables, masked, mask)
        inputs = (np.shape(masked), masked.dtype, np.shape(mask), mask.dtype)
        if (function := self._read_back.get(inputs)) is None:
            function = _read_back(self.model, self._variables, masked, mask)
            self._read_back[inputs] = function
        return function(self._variables, masked, mask)
