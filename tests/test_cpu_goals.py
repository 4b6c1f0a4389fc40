"""benchmarks/cpu_goals.py's operation counts of a compiled program (the timing is not tested)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from benchmarks.cpu_goals import op_counts, summarise_ops


def test_op_counts_read_the_programs_top_level_instructions():
    def f(x, w):
        y = jax.lax.conv_general_dilated(
            x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        z = jnp.concatenate([y, x[:, ::-1]], axis=1)  # a layout operation XLA cannot fuse away
        return jnp.tanh(z).sum(), z.transpose(0, 3, 1, 2)

    x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
    counts = op_counts(jax.jit(f).lower(x, w).compile().as_text())
    summary = summarise_ops(counts)
    assert summary["ops"] == sum(counts.values()) > 0
    assert summary["convolutions"] + counts.get("fusion:kCustom", 0) >= 1  # plain or YNNPACK
    assert not {"parameter", "constant", "tuple", "get-tuple-element"} & set(counts)
    assert summary["fusions"] >= 1
