"""The unscaled self-attention's implementations compute the same values and gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepgin_jax.models import DeepGIN
from deepgin_jax.models.attention import _block_size, chunked_attention, unscaled_attention


def tokens(n: int, length: int, depth: int, seed: int = 0) -> tuple[jax.Array, ...]:
    rng = np.random.default_rng(seed)
    # Order-one logits of a spread that makes the softmax far from uniform.
    return tuple(
        jnp.asarray(rng.standard_normal((n, length, depth)).astype(np.float32)) for _ in range(3)
    )


def softmax_attention(query: np.ndarray, key: np.ndarray, value: np.ndarray) -> np.ndarray:
    logits = np.einsum("nqd,nkd->nqk", query.astype(np.float64), key.astype(np.float64))
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("nqk,nkd->nqd", weights / weights.sum(-1, keepdims=True), value)


@pytest.mark.parametrize(
    "length, chunk_logits",
    [(150, 2**20), (150, 2 * 150 * 64), (150, 2 * 150 * 7), (149, 2 * 149 * 64)],
)
def test_chunked_attention_matches_softmax(length, chunk_logits):
    # 150 queries: one block, blocks of 50 (dividing 150) and of 6; 149 (a prime): blocks of
    # 64, the last one padded.
    query, key, value = tokens(2, length, 8)
    expected = softmax_attention(*map(np.asarray, (query, key, value)))
    got = jax.jit(chunked_attention, static_argnums=3)(query, key, value, chunk_logits)
    assert got.shape == (2, length, 8)
    np.testing.assert_allclose(np.asarray(got), expected, atol=2e-5)


def test_block_size_divides_the_queries_where_it_can():
    assert _block_size(4096, 512) == 512  # compact inference at 256x256
    assert _block_size(1024, 341) == 256  # the compact training step: not 4 blocks of 341
    assert _block_size(150, 64) == 50
    assert _block_size(149, 64) == 64  # a prime: padded
    assert _block_size(100, 400) == 100


def test_chunked_attention_gradients_match_xla():
    query, key, value = tokens(2, 96, 4, seed=1)
    cotangent = jnp.asarray(np.random.default_rng(2).standard_normal((2, 96, 4)), jnp.float32)

    def loss(implementation, q, k, v):
        if implementation == "chunked":
            out = chunked_attention(q, k, v, chunk_logits=2 * 96 * 10)
        else:
            out = unscaled_attention(q, k, v, implementation)
        return jnp.sum(out * cotangent)

    grads = {
        impl: jax.jit(jax.grad(loss, argnums=(1, 2, 3)), static_argnums=0)(impl, query, key, value)
        for impl in ("xla", "chunked")
    }
    for ours, theirs in zip(grads["chunked"], grads["xla"], strict=True):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=2e-5)


def test_chunked_attention_bfloat16_stays_close_to_float32():
    query, key, value = tokens(1, 200, 16, seed=3)
    exact = np.asarray(chunked_attention(query, key, value, chunk_logits=200 * 32))
    half = [x.astype(jnp.bfloat16) for x in (query, key, value)]
    got = chunked_attention(*half, chunk_logits=200 * 32)
    assert got.dtype == jnp.bfloat16
    error = np.abs(np.asarray(got, np.float32) - exact)
    assert error.max() < 0.08 * exact.std() and error.mean() < 0.01 * exact.std()


def test_automatic_choice_is_chunked_on_cpu_only():
    # Enough tokens that one block of logits (2**21) holds only part of the queries.
    query = key = value = jax.ShapeDtypeStruct((1, 4096, 32), jnp.float32)
    automatic = str(jax.make_jaxpr(unscaled_attention)(query, key, value))
    xla = str(
        jax.make_jaxpr(lambda *a: unscaled_attention(*a, implementation="xla"))(query, key, value)
    )
    assert "scan" not in xla
    # lax.map over blocks of queries on a CPU; jax.nn.dot_product_attention elsewhere.
    assert ("scan" in automatic) == (jax.default_backend() == "cpu")


def test_unknown_implementation_is_refused():
    query, key, value = tokens(1, 4, 2)
    with pytest.raises(ValueError, match=r"'xla', 'cudnn', 'chunked'.*got 'cudn'"):
        unscaled_attention(query, key, value, "cudn")
    image, mask = jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 64, 64, 1))
    with pytest.raises(ValueError, match="got 'flash'"):
        jax.eval_shape(
            DeepGIN(base_features=8, attention_impl="flash").init, jax.random.key(0), image, mask
        )
