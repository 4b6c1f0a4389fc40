"""Work items: the network inputs of any number of images, batched by shape.

Network inputs of one shape are batched together across boxes, sub-images, ensemble variants and
images (`Inpainter.inpaint_many`): a call holds up to `max_batch` inputs and a smaller remainder
is padded up to the next power of two, so the network compiles once per (B, H, W) with B in
{1, 2, 4, ..., max_batch}. H x W is the smallest square bucket that holds the input
(`buckets`); without buckets (a network function of your own) it is 256 x 256 for sub-images
(always, in "reference" mode), or the image's size rounded up to multiples of 8 (at least 16)
for a small image (and its transpose too with `ensemble`, when not square).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class _WorkItem:
    masked: np.ndarray  # [h, w, 3] uint8 or float32 in [0, 1], holes white
    hole: np.ndarray  # [h, w] bool
    deliver: Callable[[np.ndarray], None]  # receives the prediction [h, w, 3] float32


@dataclasses.dataclass(frozen=True)
class _Job:
    items: list[_WorkItem]
    finish: Callable[[], Any]  # called after every item was delivered; returns the result


class _SubImageSum:
    """Accumulates the inverse-transformed predictions of the ensemble variants of sub-images."""

    def __init__(self, count: int, tile_hw: tuple[int, int], quantize: bool):
        self.quantize = quantize
        self.total = np.zeros((count, *tile_hw, 3), np.float64 if quantize else np.float32)
        self.variants = 0

    def items(
        self, masked: np.ndarray, hole: np.ndarray, transforms: Sequence[tuple[Callable, Callable]]
    ) -> list[_WorkItem]:
        """One work item per (sub-image, transform); masked [n, h, w, 3], hole [n, h, w]."""
        self.variants = len(transforms)
        return [
            _WorkItem(
                forward(masked[k]), forward(hole[k]), functools.partial(self._add, k, inverse)
            )
            for k in range(masked.shape[0])
            for forward, inverse in transforms
        ]

    def _add(self, index: int, inverse: Callable, prediction: np.ndarray) -> None:
        if self.quantize:  # the reference's tensor2im: x255, clip, truncate to uint8
            prediction = np.clip(prediction * np.float32(255.0), 0, 255).astype(np.uint8)
        self.total[index] += inverse(prediction)

    def mean(self) -> np.ndarray:
        """[n, h, w, 3]: float32 in [0, 1], or uint8 (rounded mean of the truncated variants)."""
        if self.quantize:
            return np.round(self.total / float(self.variants)).astype(np.uint8)
        if self.variants == 1:
            return self.total
        return self.total / np.float32(self.variants)


# progress(done, total): `done` of the `total` network inputs of a call have been run.
ProgressFn = Callable[[int, int], None]


def _no_progress(done: int, total: int) -> None:
    del done, total


def _next_power_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _batch_plan(
    count: int, max_batch: int, parallel_calls: int = 1, *, pad: bool = True
) -> list[tuple[int, int]]:
    """(number of real inputs, padded batch size) per call for `count` inputs of one shape,
    the largest calls first. With `parallel_calls` > 1 the inputs are first shared out into
    that many near-equal parts, each planned on its own, so that calls running at once have
    about the same work (4 inputs on 2 cores: two calls of 2, not one of 4). A part's
    remainder below `max_batch` is one call padded to a power of two with `pad`, and calls of
    its powers of two without (`pads_batches`)."""
    share, extra = divmod(count, parallel_calls)
    shares = [share + (part < extra) for part in range(parallel_calls)]
    plan = []
    for part in shares:
        plan += [(max_batch, max_batch)] * (part // max_batch)
        rest = part % max_batch
        if rest and pad:
            plan.append((rest, min(max_batch, _next_power_of_two(rest))))
        elif rest:
            plan += [(1 << bit, 1 << bit) for bit in range(rest.bit_length()) if rest >> bit & 1]
    return sorted(plan, reverse=True)


def pads_batches() -> bool:
    """Whether a batch's remainder is padded to a power of two (`_batch_plan`): on an
    accelerator, where a few more inputs cost little; not on a CPU, where a call's time grows
    with its batch (DeepGIN-compact at 256x256, one call: 75, 159 and 319 ms for 1, 2 and 4
    inputs; the 6 tiles of a stroke set on 2 cores in 0.30 s as calls of 2 and 1 against 0.43
    s as calls of 4, each padded from 3)."""
    return jax.default_backend() != "cpu"


def default_parallel_calls() -> int:
    """How many network calls an `Inpainter` runs at once by default: on a CPU one per core the
    process may use (XLA:CPU runs one call of a small network on about one core: a second
    core shortens DeepGIN-compact's 256x256 forward pass by 5 %, while two calls at once take
    about the time of one), elsewhere 1."""
    if jax.default_backend() != "cpu":
        return 1
    if hasattr(os, "sched_getaffinity"):  # a container or `taskset` may allow fewer cores
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_max_batch() -> int:
    """A good `max_batch` for the default JAX backend: on a CPU, batches beyond a few inputs
    only add padding and cache misses; an accelerator wants them large."""
    return 4 if jax.default_backend() == "cpu" else 16
