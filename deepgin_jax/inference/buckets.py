"""Shape buckets: the few network input shapes an `Inpainter` ever compiles.

Every network input is mirror-padded (bottom and right, the image and its hole together) to the
smallest square bucket that holds it, and the prediction is cut back; batches are padded to a
power of two (`batch_sizes`). So a hole of a new size in a photo of any size reuses executables
that already exist, and `Inpainter.warm_up` can compile all of them in advance.
"""

from __future__ import annotations

import numpy as np

from deepgin_jax.inference.geometry import MIN_SIZE, SIZE_MULTIPLE


def default_buckets(max_side: int, tile_size: int) -> tuple[int, ...]:
    """A quarter, half, three quarters and all of `max_side` (the network's largest direct
    input), and the sub-image `tile_size`, each rounded up to a multiple of 8 and at least 16."""
    sides = {max_side // 4, max_side // 2, 3 * max_side // 4, max_side, tile_size}
    return tuple(
        sorted({max(MIN_SIZE, -(-side // SIZE_MULTIPLE) * SIZE_MULTIPLE) for side in sides})
    )


def bucket_shape(height: int, width: int, buckets: tuple[int, ...]) -> tuple[int, int]:
    """The smallest square bucket holding [height, width], or (height, width) when none does."""
    for side in buckets:
        if side >= max(height, width):
            return side, side
    return height, width


def batch_sizes(max_batch: int) -> tuple[int, ...]:
    """The padded batch sizes `max_batch` allows: the powers of two below it, and itself."""
    sizes = {max_batch}
    size = 1
    while size < max_batch:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


def pad_to(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reflect-pads the bottom and right of [h, w, ...] to [height, width, ...] (repeatedly when
    the padding is wider than the array; a 1-pixel side is repeated)."""
    if array.shape[:2] == (height, width):
        return array
    pad = [(0, height - array.shape[0]), (0, width - array.shape[1])]
    mode = "edge" if min(array.shape[:2]) == 1 else "reflect"
    return np.pad(array, pad + [(0, 0)] * (array.ndim - 2), mode=mode)
