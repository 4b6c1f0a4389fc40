"""Random hole masks for training and fixed evaluation mask sets (spec section 6).

Every generator is a pure function of a `np.random.Generator` and the mask size, and returns
float32 `[H, W]` with values in {0, 1}, 1 = hole. Three families, as in the reference:

* `rectangular_mask`: one axis-aligned box (spec 6.1), mean hole ratio 0.246 at 256x256;
* `free_form_mask`: 15-23 thick polyline strokes (spec 6.2), mean hole ratio 0.395;
* `cellular_automata_mask`: majority-vote-smoothed noise (spec 6.3), mean hole ratio 0.51.

Run as a module to write a fixed mask set for evaluation:

    python -m deepgin_jax.masks --type mixed --count 1000 --size 256 --seed 0 --output masks/

which writes `<type>_<index>.png` (8-bit, 0 = known, 255 = hole) and a `masks.json` manifest.
`--type balanced` cycles rect, freeform, ca: with `evaluate --masks-per-image 3`, every image
is evaluated with one mask of each type.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from deepgin_jax import image_io
from deepgin_jax.atomic import atomic_write

MASK_TYPES = ("rect", "freeform", "ca")
MIXED = "mixed"
# Mask i of a balanced set has type MASK_TYPES[i % 3]: evaluated with three masks per image
# (`evaluate --masks-per-image 3`), every image is seen with one mask of each type.
BALANCED = "balanced"
SET_KINDS = (*MASK_TYPES, MIXED, BALANCED)
MANIFEST_NAME = "masks.json"

# Reference sampling constants (spec 6.1-6.3).
_RECT_MIN_FRACTION, _RECT_MAX_FRACTION = 0.3, 0.7
_FF_MIN_STROKES, _FF_EXTRA_STROKES = 15, 9  # 15 + integers(0, 9) -> 15..23 strokes
_FF_MAX_SEGMENTS = 5  # 1 + integers(0, 5) -> 1..5 segments per stroke
_FF_MIN_LENGTH, _FF_EXTRA_LENGTH = 10, 60  # 10..69 px
_FF_MIN_BRUSH, _FF_EXTRA_BRUSH = 10, 15  # 10..24 px
_FF_TWO_PI = 2 * 3.1415926  # the reference's truncated value of 2*pi
# The size the reference's stroke lengths and widths are drawn for (its training crops).
_FF_REFERENCE_SIZE = 256
_CA_SCALES = (1, 2, 4, 8)
_CA_MIN_ITERATIONS, _CA_MAX_ITERATIONS = 2, 6
_CROSS_3X3 = ndimage.generate_binary_structure(2, 1)


def _check_size(height: int, width: int) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"Mask size must be positive, got height={height}, width={width}.")


def rectangular_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One box whose sides are uniform integers in [0.3, 0.7] of the image sides (spec 6.1).

    Returns:
      float32 `[height, width]`, 1 inside the box (hole), 0 elsewhere.
    """
    _check_size(height, width)
    box_width = int(
        rng.integers(int(_RECT_MIN_FRACTION * width), int(_RECT_MAX_FRACTION * width) + 1)
    )
    box_height = int(
        rng.integers(int(_RECT_MIN_FRACTION * height), int(_RECT_MAX_FRACTION * height) + 1)
    )
    box_width, box_height = max(box_width, 1), max(box_height, 1)
    left = int(rng.integers(0, width - box_width + 1))
    top = int(rng.integers(0, height - box_height + 1))
    mask = np.zeros((height, width), np.float32)
    mask[top : top + box_height, left : left + box_width] = 1.0
    return mask


def free_form_mask(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    num_strokes: int | None = None,
    scale_strokes: bool = False,
) -> np.ndarray:
    """Free-form brush strokes, the AIM-2020 variant of the DeepFill generator (spec 6.2).

    Each stroke starts at a uniform pixel and has 1-5 straight segments. A segment's angle is
    0.01 + k radians, k uniform in {0, 1, 2, 3}, mirrored to 2*pi - angle on even strokes; its
    length is 10-69 px and its brush width 10-24 px. End points are truncated towards zero and
    segments are drawn with `cv2.line` (round caps, clipped at the border). The reference
    samples the start row in [0, W) and the start column in [0, H); here the row is sampled in
    [0, H) and the column in [0, W), which is the same for square masks.

    The lengths and widths are pixels at 256x256, so at 64x64 the strokes cover most of the
    image. `scale_strokes` scales both by min(H, W) / 256 (widths at least 1 px), keeping the
    hole ratio of 256x256 at any size; the random draws are the same, and at 256 so is the mask.

    Returns:
      float32 `[height, width]`, 1 on the strokes (hole), 0 elsewhere.
    """
    _check_size(height, width)
    scale = min(height, width) / _FF_REFERENCE_SIZE if scale_strokes else 1.0
    if num_strokes is None:
        num_strokes = _FF_MIN_STROKES + int(rng.integers(0, _FF_EXTRA_STROKES))
    mask = np.zeros((height, width), np.float32)
    for stroke in range(num_strokes):
        row, col = int(rng.integers(0, height)), int(rng.integers(0, width))
        for _ in range(1 + int(rng.integers(0, _FF_MAX_SEGMENTS))):
            angle = 0.01 + int(rng.integers(0, 4))
            if stroke % 2 == 0:
                angle = _FF_TWO_PI - angle
            length = (_FF_MIN_LENGTH + int(rng.integers(0, _FF_EXTRA_LENGTH))) * scale
            brush_width = _FF_MIN_BRUSH + int(rng.integers(0, _FF_EXTRA_BRUSH))
            if scale != 1.0:
                brush_width = max(1, round(brush_width * scale))
            end_row = int(np.int32(row + length * math.sin(angle)))
            end_col = int(np.int32(col + length * math.cos(angle)))
            cv2.line(mask, (col, row), (end_col, end_row), 1.0, brush_width)
            row, col = end_row, end_col
    return mask


def binary_median_3x3(grid: np.ndarray) -> np.ndarray:
    """`scipy.ndimage.median_filter(grid, size=3, mode="constant")` for a {0, 1} uint8 grid.

    On binary data the 3x3 median is a majority vote (at least 5 of the 9 cells are 1, cells
    outside the border count as 0); summing nine shifted views is ~30x faster than the
    general median filter and gives identical output (checked in tests).
    """
    height, width = grid.shape
    padded = np.pad(grid, 1)
    votes = sum(padded[i : i + height, j : j + width] for i in range(3) for j in range(3))
    return (votes >= 5).astype(np.uint8)


def cellular_automata_mask(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    scale: int | None = None,
    iterations: int | None = None,
) -> np.ndarray:
    """Cellular-automata blobs, the AIM-2020 organisers' method (spec 6.3).

    Bernoulli(0.5) noise on a grid `scale` times coarser than the mask (scale uniform in
    {1, 2, 4, 8}) is smoothed by `iterations` (uniform in [2, 6]) 3x3 median filters with zeros
    outside the border (a 9-cell majority vote, `binary_median_3x3`), upscaled by `scale` x
    `scale` block replication, and, when scale > 1, dilated once with the 3x3 cross. Sizes
    that are not multiples of `scale` use a grid of ceil(H / scale) x ceil(W / scale) cells,
    cropped after upscaling.

    Returns:
      float32 `[height, width]`, 1 = hole.
    """
    _check_size(height, width)
    if scale is None:
        scale = _CA_SCALES[int(rng.integers(0, len(_CA_SCALES)))]
    if iterations is None:
        iterations = int(rng.integers(_CA_MIN_ITERATIONS, _CA_MAX_ITERATIONS + 1))
    grid = rng.integers(0, 2, size=(-(-height // scale), -(-width // scale)), dtype=np.uint8)
    for _ in range(iterations):
        grid = binary_median_3x3(grid)
    mask = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)[:height, :width] > 0
    if scale > 1:
        mask = ndimage.binary_dilation(mask, structure=_CROSS_3X3)
    return mask.astype(np.float32)


OBJECT_SHAPES = ("ellipse", "box")
OBJECT_FRACTIONS = (0.03, 0.08)  # of the image's area
_OBJECT_MAX_ASPECT = 2.0  # width / height within [1/2, 2], log-uniform


def object_mask(
    rng: np.random.Generator,
    height: int,
    width: int,
    shape: str = "ellipse",
    fractions: tuple[float, float] = OBJECT_FRACTIONS,
) -> np.ndarray:
    """One object-sized hole, as a user paints over an object to remove it: an ellipse or an
    axis-aligned box whose area is uniform in `fractions` of the image (up to rounding), its
    aspect ratio log-uniform in [1/2, 2] (narrowed where the image is too small for it), and
    its position uniform with the whole shape inside the image.

    Returns:
      float32 `[height, width]`, 1 = hole.
    """
    _check_size(height, width)
    if shape not in OBJECT_SHAPES:
        raise ValueError(f"shape must be one of {OBJECT_SHAPES}, got {shape!r}")
    low, high = fractions
    if not 0 < low <= high < 1:
        raise ValueError(f"fractions must satisfy 0 < low <= high < 1, got {fractions}")
    area = float(rng.uniform(low, high)) * height * width
    if shape == "ellipse":
        area *= 4 / math.pi  # the ellipse's bounding box
    aspect = math.exp(float(rng.uniform(-1, 1)) * math.log(_OBJECT_MAX_ASPECT))
    box_w = min(max(1, round(math.sqrt(area * aspect))), width)
    box_h = min(max(1, round(area / box_w)), height)
    box_w = min(max(1, round(area / box_h)), width)
    top = int(rng.integers(0, height - box_h + 1))
    left = int(rng.integers(0, width - box_w + 1))
    mask = np.zeros((height, width), np.float32)
    if shape == "box":
        mask[top : top + box_h, left : left + box_w] = 1.0
    else:
        rows, cols = np.ogrid[0:box_h, 0:box_w]
        inside = ((rows + 0.5) / box_h * 2 - 1) ** 2 + ((cols + 0.5) / box_w * 2 - 1) ** 2 <= 1
        mask[top : top + box_h, left : left + box_w] = inside
    return mask


_GENERATORS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "rect": rectangular_mask,
    "freeform": free_form_mask,
    "ca": cellular_automata_mask,
}


def resolve_mask_kind(kind: str, rng: np.random.Generator) -> str:
    """Returns `kind`, or for "mixed" one of `MASK_TYPES` drawn uniformly from `rng`."""
    if kind == MIXED:
        return MASK_TYPES[int(rng.integers(0, len(MASK_TYPES)))]
    if kind not in _GENERATORS:
        raise ValueError(f"Unknown mask type {kind!r}; expected one of {(*MASK_TYPES, MIXED)}.")
    return kind


def generate_mask(
    kind: str, rng: np.random.Generator, height: int, width: int, *, scale_strokes: bool = False
) -> np.ndarray:
    """A mask of type `kind` ("rect", "freeform", "ca" or "mixed"): float32 `[H, W]`, 1 = hole.

    scale_strokes: free-form strokes scaled to the mask size (`free_form_mask`).
    """
    return _generate(resolve_mask_kind(kind, rng), rng, height, width, scale_strokes)


def _generate(
    kind: str, rng: np.random.Generator, height: int, width: int, scale_strokes: bool
) -> np.ndarray:
    if kind == "freeform":
        return free_form_mask(rng, height, width, scale_strokes=scale_strokes)
    return _GENERATORS[kind](rng, height, width)


def mask_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for mask `index` of a set: independent of the set's size."""
    return np.random.default_rng([seed, index])


def write_mask_set(
    output_dir: str | os.PathLike,
    *,
    kind: str,
    count: int,
    height: int,
    width: int,
    seed: int,
    scale_strokes: bool = False,
    progress: Callable[[range], Any] | None = None,
) -> dict[str, Any]:
    """Writes `count` masks as `<type>_<index:05d>.png` (0 = known, 255 = hole) plus `masks.json`.

    Mask `i` depends only on (`seed`, `i`, `kind`, size), so a smaller set is a prefix of a
    larger one and identical arguments give byte-identical files. Every file is written
    atomically; the manifest is written last.

    Args:
      output_dir: folder to write into (created if missing).
      kind: "rect", "freeform", "ca", "mixed" (the type of each mask is then drawn per mask) or
        "balanced" (mask i has type MASK_TYPES[i % 3]).
      scale_strokes: free-form strokes scaled to the mask size (`free_form_mask`).
      progress: optional wrapper for the index range, e.g. `tqdm.tqdm`.

    Returns:
      The manifest: seed, type, height, width, count and per-file `{file, type, hole_ratio}`.
    """
    if count < 0 or seed < 0:
        raise ValueError(f"count and seed must be >= 0, got count={count}, seed={seed}.")
    _check_size(height, width)
    if kind not in SET_KINDS:
        raise ValueError(f"Unknown mask set type {kind!r}; expected one of {SET_KINDS}.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    indices = range(count)
    entries = []
    for index in progress(indices) if progress else indices:
        rng = mask_rng(seed, index)
        if kind == BALANCED:
            actual_kind = MASK_TYPES[index % len(MASK_TYPES)]
        else:
            actual_kind = resolve_mask_kind(kind, rng)
        mask = _generate(actual_kind, rng, height, width, scale_strokes)
        file_name = f"{actual_kind}_{index:05d}.png"
        image_io.save_mask(output_dir / file_name, mask > 0.5)
        entries.append(
            {"file": file_name, "type": actual_kind, "hole_ratio": round(float(mask.mean()), 6)}
        )
    manifest = {
        "seed": seed,
        "type": kind,
        "height": height,
        "width": width,
        "scale_strokes": scale_strokes,
        "count": count,
        "masks": entries,
    }
    with atomic_write(output_dir / MANIFEST_NAME, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    return manifest


_ENTRY_FIELDS = {"file": str, "type": str, "hole_ratio": (int, float)}


def _manifest_problem(manifest: Any) -> str | None:
    """What `write_mask_set`'s manifest would have that `manifest` lacks, or None."""
    if not isinstance(manifest, dict):
        return f"a JSON object was expected, not {type(manifest).__name__}"
    for key in ("height", "width"):
        if not isinstance(manifest.get(key), int) or manifest[key] < 1:
            return f"{key!r} must be a positive integer, got {manifest.get(key)!r}"
    entries = manifest.get("masks")
    if not isinstance(entries, list):
        return f"'masks' must be a list of masks, got {entries!r}"
    for index, entry in enumerate(entries):
        fields_ok = isinstance(entry, dict) and all(
            isinstance(entry.get(k), t) for k, t in _ENTRY_FIELDS.items()
        )
        if not fields_ok:
            return f"mask {index} ({entry!r:.80}) lacks a file name, type or hole_ratio"
    return None


def read_mask_set(mask_dir: str | os.PathLike) -> tuple[dict[str, Any], list[Path]]:
    """Reads a set written by `write_mask_set`: its manifest and the mask paths in index order."""
    mask_dir = Path(mask_dir)
    manifest_path = mask_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"{manifest_path} not found: write a mask set with `python -m deepgin_jax.masks`."
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError as e:
        problem = f"not JSON ({e})"
    else:
        problem = _manifest_problem(manifest)
    if problem is not None:
        raise ValueError(
            f"{manifest_path} is not a mask set's manifest: {problem}; write the set again "
            f"with `python -m deepgin_jax.masks --output {mask_dir}`"
        )
    paths = [mask_dir / entry["file"] for entry in manifest["masks"]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Mask set {mask_dir} lacks {len(missing)} files, e.g. {missing[0]}"
        )
    return manifest, paths


def _main(argv: list[str]) -> None:
    import tqdm
    from absl import flags, logging

    del argv
    f = flags.FLAGS
    height = f.height or f.size
    width = f.width or f.size
    manifest = write_mask_set(
        f.output,
        kind=f.type,
        count=f.count,
        height=height,
        width=width,
        seed=f.seed,
        scale_strokes=f.scale_strokes,
        progress=lambda r: tqdm.tqdm(r, desc=f"{f.type} masks", unit="mask"),
    )
    ratios = [m["hole_ratio"] for m in manifest["masks"]]
    mean_ratio = float(np.mean(ratios)) if ratios else float("nan")
    logging.info(
        "Wrote %d %dx%d masks to %s (mean hole ratio %.3f).",
        len(ratios),
        height,
        width,
        f.output,
        mean_ratio,
    )


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_enum(
        "type",
        MIXED,
        list(SET_KINDS),
        "Mask family; mixed draws one per mask, balanced cycles rect, freeform, ca.",
    )
    flags.DEFINE_integer("count", 1000, "Number of masks.", lower_bound=0)
    flags.DEFINE_integer("size", 256, "Height and width of square masks.", lower_bound=1)
    flags.DEFINE_integer("height", None, "Height (overrides --size).", lower_bound=1)
    flags.DEFINE_integer("width", None, "Width (overrides --size).", lower_bound=1)
    flags.DEFINE_integer(
        "seed", 0, "Seed; the same seed gives byte-identical files.", lower_bound=0
    )
    flags.DEFINE_bool(
        "scale_strokes",
        False,
        "Scale free-form stroke lengths and widths by min(height, width) / 256 (their hole "
        "ratio at 256x256 at any size); off = the reference's pixel sizes.",
    )
    flags.DEFINE_string("output", None, "Output folder.", required=True)


if __name__ == "__main__":
    from deepgin_jax import cli

    _define_flags()
    cli.run(_main)
