"""Single-head, unscaled attention softmax(q k^T) v (spec 2.5) and its implementations.

"xla" and "cudnn" go through `jax.nn.dot_product_attention` (scale 1, as the reference); "cudnn"
is the fused kernel on NVIDIA GPUs. "chunked" computes the same values a block of queries at a
time and divides by the softmax's sum only after the second product, so one block of logits
stays in the CPU's cache: 4x faster than "xla" on a CPU at the 64x64 (4096-token) scale, and
its forward pass holds one block of logits at a time, not all of them. `None` picks "chunked"
on CPUs and leaves the choice to `jax.nn.dot_product_attention` on accelerators.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

IMPLEMENTATIONS = ("xla", "cudnn", "chunked")

# One block of float32 logits of at most this many elements (8 MiB) fits in a CPU's L2/L3.
CHUNK_LOGITS = 2**21


def validate_implementation(
    implementation: str | None, name: str = "attention implementation"
) -> None:
    """Raises ValueError naming `name` unless `implementation` is None or one of IMPLEMENTATIONS."""
    if implementation is not None and implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"{name} must be one of {IMPLEMENTATIONS} or automatic (None; '' in a config), "
            f"got {implementation!r}"
        )


def unscaled_attention(
    query: Array, key: Array, value: Array, implementation: str | None = None
) -> Array:
    """softmax(query key^T) value, with no 1/sqrt(d) scale; query, key, value: [N, L, D]."""
    validate_implementation(implementation)
    if implementation is None and jax.default_backend() == "cpu":
        implementation = "chunked"
    if implementation == "chunked":
        return chunked_attention(query, key, value)
    one_head = (slice(None), slice(None), None)  # [N, L, D] -> [N, L, 1 head, D]
    out = jax.nn.dot_product_attention(
        query[one_head], key[one_head], value[one_head], scale=1.0, implementation=implementation
    )
    return out[:, :, 0, :]


def _attend_block(query: Array, key: Array, value: Array) -> Array:
    """Attention of a block of queries to all keys, normalised after the product with values.

    Like `jax.nn.dot_product_attention`: logits and softmax in float32 (bfloat16 inputs
    multiply with float32 accumulation), probabilities in the value's dtype for the product.
    """
    logits = jnp.einsum("nqd,nkd->nqk", query, key, preferred_element_type=jnp.float32)
    # The shift by the row's maximum changes no value, so its gradient is zero: stopping it
    # (as `jax.nn.softmax` does) spares the backward pass the maximum's comparisons.
    weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
    total = weights.sum(axis=-1, keepdims=True)
    attended = jnp.einsum(
        "nqk,nkd->nqd", weights.astype(value.dtype), value, preferred_element_type=jnp.float32
    )
    return (attended / total).astype(value.dtype)


def _block_size(length: int, limit: int) -> int:
    """The largest divisor of `length` up to `limit` if it is at least half of `limit` (no
    padded queries: 1024 tokens in blocks of 256, not 4 blocks of 341 with a third padding),
    otherwise `limit`."""
    if limit >= length:
        return length
    divisor = max(d for d in range(1, limit + 1) if length % d == 0)
    return divisor if 2 * divisor >= limit else limit


def chunked_attention(
    query: Array, key: Array, value: Array, chunk_logits: int = CHUNK_LOGITS
) -> Array:
    """`unscaled_attention` a block of queries at a time (blocks of at most `chunk_logits`
    logits across the batch); the queries are padded to a whole number of blocks unless a
    block of at least half that size divides them."""
    n, length, depth = query.shape
    chunk = _block_size(length, max(1, chunk_logits // (n * key.shape[1])))
    if chunk >= length:
        return _attend_block(query, key, value)
    pad = -length % chunk
    blocks = jnp.pad(query, ((0, 0), (0, pad), (0, 0))) if pad else query
    blocks = blocks.reshape(n, (length + pad) // chunk, chunk, depth).swapaxes(0, 1)
    attended = jax.lax.map(lambda block: _attend_block(block, key, value), blocks)
    return attended.swapaxes(0, 1).reshape(n, length + pad, value.shape[-1])[:, :length]
