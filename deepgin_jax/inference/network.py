"""The generator as a network function: `GeneratorForward` runs a DeepGIN's reconstruction,
compiled once per model configuration and input shape and shared by every instance (so several
`Inpainter`s of one architecture share their executables).

While the persistent compilation cache is on, the forward pass is traced once per model
configuration and input shape for every process: it is kept as serialized StableHLO beside the
cache (`deepgin_jax.trace_cache`), and a later process runs that, so that reading its compiled
program back costs no tracing of the Flax model. A generator given by its fields (a shipped
model) is built only to be traced: such a process never imports Flax.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from deepgin_jax import trace_cache

if TYPE_CHECKING:
    from deepgin_jax.models.generator import DeepGIN

# The network as a function: masked images [B, H, W, 3] float32 in [0, 1] with white holes and
# masks [B, H, W, 1] float32 (1 = hole) -> the reconstruction [B, H, W, 3] (reconst_img).
ForwardFn = Callable[[np.ndarray, np.ndarray], Any]


# For a process that runs each compiled shape only a few times (`few_calls`): XLA:CPU builds
# the YNNPACK pipelines of a compiled program at its first run (0.2 s of CPU for
# DeepGIN-compact at 128x128: a first call of 0.24 s against 0.07 s without them), which its
# later calls repay at about 0.015 s each (0.03 s against 0.045 s).
FEW_CALLS_CPU_OPTIONS = (("xla_cpu_experimental_ynn_fusion_type", ""),)
CompilerOptions = tuple[tuple[str, str], ...]


def forward_cache_size() -> int:
    """How many compiled forms of the generator's forward pass this process holds (one per
    model configuration, input shape and compiler options)."""
    jitted = [_reconstruct, *_WITH_OPTIONS.values(), *_READ_BACK.values()]
    return sum(f._cache_size() for f in jitted)


@functools.partial(jax.jit, static_argnums=0)
def _reconstruct(model: DeepGIN, variables: Any, masked: jax.Array, mask: jax.Array) -> jax.Array:
    return model.apply(variables, masked, mask).reconstructed


_WITH_OPTIONS: dict[CompilerOptions, Callable[..., jax.Array]] = {}


def _traced_forward(options: CompilerOptions) -> Callable[..., jax.Array]:
    """`_reconstruct` compiled with XLA `options` (jitted once per options)."""
    if not options:
        return _reconstruct
    if (function := _WITH_OPTIONS.get(options)) is None:
        function = jax.jit(
            _reconstruct.__wrapped__, static_argnums=0, compiler_options=dict(options)
        )
        _WITH_OPTIONS[options] = function
    return function


# The forward passes read back from `trace_cache` (or traced and kept there) in this process,
# by their file stem: jitted, so that each is compiled (or read from the compilation cache) once.
_READ_BACK: dict[tuple[str, CompilerOptions], Callable[..., jax.Array]] = {}
_NOT_EXPORTABLE: set[str] = set()  # run by `_reconstruct`, traced in every process


def _read_back(
    key_fields: tuple[tuple[str, Any], ...],
    build: Callable[[], DeepGIN],
    variables: Any,
    masked: Any,
    mask: Any,
    options: CompilerOptions = (),
) -> Callable[..., jax.Array]:
    """The jitted forward pass of the generator of `key_fields` (`build()` makes it, only if
    it must be traced) at these inputs' shapes, run from its StableHLO in `trace_cache`
    (traced and kept there the first time), compiled with XLA `options`."""
    inputs = [trace_cache.abstract(x) for x in (masked, mask)]
    shapes = jax.tree.map(lambda v: (v.shape, str(v.dtype)), variables)
    stem = trace_cache.key("generator_forward", (key_fields, shapes, inputs))
    if stem in _NOT_EXPORTABLE:
        return functools.partial(_traced_forward(options), build())
    if (function := _READ_BACK.get((stem, options))) is None:

        def traced(variables: Any, masked: jax.Array, mask: jax.Array) -> jax.Array:
            return _reconstruct(build(), variables, masked, mask)

        try:
            program = trace_cache.exported(stem, jax.jit(traced), (variables, *inputs))
        except Exception as e:  # e.g. an operation that jax.export does not serialize
            logging.warning("The generator is traced in every process: cannot keep it (%s).", e)
            _NOT_EXPORTABLE.add(stem)
            return functools.partial(_traced_forward(options), build())

        def _reconstruct_exported(variables: Any, masked: jax.Array, mask: jax.Array):
            return program.call(variables, masked, mask)

        # Named as the traced function, so that compilation logs read the same either way.
        _reconstruct_exported.__name__ = "_reconstruct"
        function = jax.jit(_reconstruct_exported, compiler_options=dict(options) or None)
        _READ_BACK[(stem, options)] = function
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
      model, variables: the generator, or its `DeepGIN` fields (built, importing Flax, only
        where the network must be traced), and its variables.
      dtype: the computation dtype (e.g. jnp.bfloat16 on GPU), None for the model's; the
        parameters stay float32.
      few_calls: compiled for a process that runs each input shape a few times (a command on
        one photo): on CPUs without the pipelines XLA builds at a program's first run, which
        pay off after about ten runs (`FEW_CALLS_CPU_OPTIONS`). The same values to float
        rounding.
    """

    def __init__(
        self,
        model: DeepGIN | Mapping[str, Any],
        variables: Any,
        *,
        dtype: Any = None,
        recommended: dict[str, Any] | None = None,
        few_calls: bool = False,
    ):
        if isinstance(model, Mapping):
            self._model: DeepGIN | None = None
            self._fields = {k: tuple(v) if isinstance(v, list) else v for k, v in model.items()}
            if dtype is not None:
                self._fields["dtype"] = dtype
        else:
            if dtype is not None and dtype != model.dtype:
                model = model.clone(dtype=dtype)
            self._model = _hashable(model)
            self._fields = dict(trace_cache.module_fields(self._model))
        # The traced programs' key. A model and its fields name the same network by different
        # keys (its fields' defaults are in the model's), each traced once.
        self._key_fields = tuple(sorted(self._fields.items()))
        on_cpu = jax.default_backend() == "cpu"
        self._options: CompilerOptions = FEW_CALLS_CPU_OPTIONS if few_calls and on_cpu else ()
        # device_put, not jnp.asarray: that compiles a conversion per parameter shape (~1 s).
        self._variables = jax.device_put(variables)
        self._read_back: dict[tuple, Callable[..., jax.Array]] = {}  # by input shapes
        # The first call of each input shape compiles (or reads back) its program: calls of one
        # shape from several threads wait for it, instead of each compiling it again.
        self._compiled_shapes: set[tuple] = set()
        self._first_calls: dict[tuple, threading.Lock] = collections.defaultdict(threading.Lock)
        self._first_calls_lock = threading.Lock()
        # `Inpainter`'s defaults for this network: {"upscale": ..., "blend": ...}.
        self.recommended = dict(recommended or {})

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike | None,
        *,
        dtype: Any = jnp.float32,
        few_calls: bool = False,
    ) -> GeneratorForward:
        """The generator `deepgin_jax.shipped.load_any_generator` reads from `checkpoint`
        (None: the shipped model); a shipped model's card gives the settings it is
        `recommended` to run with (`shipped.recommended_inference`)."""
        from deepgin_jax import shipped  # which reads its cards' settings with our options

        model, variables = shipped.load_any_generator(checkpoint, as_fields=True, dtype=dtype)
        recommended = shipped.recommended_inference(checkpoint)
        return cls(model, variables, recommended=recommended, few_calls=few_calls)

    @property
    def model(self) -> DeepGIN:
        """The generator (built from its fields on first use)."""
        if self._model is None:
            from deepgin_jax.shipped import build_generator

            self._model = _hashable(build_generator(self._fields))
        return self._model

    def __call__(self, masked: np.ndarray, mask: np.ndarray) -> jax.Array:
        inputs = (np.shape(masked), masked.dtype, np.shape(mask), mask.dtype)
        if inputs in self._compiled_shapes:
            return self._call(inputs, masked, mask)
        with self._first_calls_lock:
            first_call = self._first_calls[inputs]
        with first_call:
            out = jax.block_until_ready(self._call(inputs, masked, mask))
            self._compiled_shapes.add(inputs)
        return out

    def _call(self, inputs: tuple, masked: np.ndarray, mask: np.ndarray) -> jax.Array:
        if trace_cache.folder() is None:
            return _traced_forward(self._options)(self.model, self._variables, masked, mask)
        if (function := self._read_back.get(inputs)) is None:
            function = _read_back(
                self._key_fields,
                lambda: self.model,
                self._variables,
                masked,
                mask,
                self._options,
            )
            self._read_back[inputs] = function
        return function(self._variables, masked, mask)
