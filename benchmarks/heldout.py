"""Held-out crops with the three mask kinds, holes for whole photos, and the scores inside
the holes (benchmarks; no flags, so tests can import it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from deepgin_jax import masks
from deepgin_jax.baselines import make_baseline
from deepgin_jax.data.transforms import resize_bicubic
from deepgin_jax.image_io import read_rgb

MASK_KINDS = ("rect", "ca", "freeform")
# The classical methods scored beside Telea (`deepgin_jax.baselines`); PatchMatch is left out
# of the per-checkpoint curves for its time.
STRONGER_BASELINES = ("biharmonic", "fsr_fast")


def masked_crops(photos: Sequence[Path], size: int, seed: int) -> dict[str, np.ndarray]:
    """Centre squares of `photos` resized to `size`, each with the three mask kinds: a batch
    `{"image": uint8 [3N, S, S, 3], "mask": uint8 [3N, S, S, 1]}` as the training pipeline's."""
    images, holes = [], []
    for index, path in enumerate(photos):
        rgb = read_rgb(path)
        side = min(rgb.shape[:2])
        top, left = (rgb.shape[0] - side) // 2, (rgb.shape[1] - side) // 2
        square = resize_bicubic(rgb[top : top + side, left : left + side], size, size)
        rng = masks.mask_rng(seed, index)
        for kind in MASK_KINDS:
            hole = np.zeros((size, size))
            while not 0 < hole.mean() < 1:  # small CA masks can come out empty
                hole = masks.generate_mask(kind, rng, size, size, scale_strokes=True)
            images.append(square)
            holes.append(hole)
    return {
        "image": np.stack(images),
        "mask": (np.stack(holes)[..., None] > 0.5).astype(np.uint8),
    }


def hole_scores(completed: np.ndarray, batch: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean over samples of the PSNR inside the hole and the per-channel spatial std inside it,
    per mask kind and overall; `completed` is float [N, S, S, 3] in [0, 1]."""
    rows = []
    for index, (result, image, mask) in enumerate(
        zip(completed, batch["image"], batch["mask"], strict=True)
    ):
        hole = mask[..., 0] > 0
        error = result[hole] - image[hole].astype(np.float64) / 255.0
        psnr = 10 * np.log10(1.0 / max(float(np.mean(error**2)), 1e-10))
        rows.append((MASK_KINDS[index % 3], psnr, float(result[hole].std(axis=0).mean())))
    scores = {
        "hole_psnr": float(np.mean([r[1] for r in rows])),
        "hole_std": float(np.mean([r[2] for r in rows])),
    }
    for kind in MASK_KINDS:
        scores[f"hole_psnr_{kind}"] = float(np.mean([r[1] for r in rows if r[0] == kind]))
    return scores


def telea_fills(batch: dict[str, np.ndarray]) -> np.ndarray:
    """OpenCV Telea (radius 3) on every sample: float [N, S, S, 3] in [0, 1]."""
    holes = batch["mask"][..., 0] > 0
    fills = [
        cv2.inpaint(image, hole.astype(np.uint8) * 255, 3.0, cv2.INPAINT_TELEA)
        for image, hole in zip(batch["image"], holes, strict=True)
    ]
    return np.stack(fills).astype(np.float64) / 255.0


def baseline_fills(batch: dict[str, np.ndarray], name: str) -> np.ndarray:
    """`deepgin_jax.baselines.make_baseline(name)` on every sample: float [N, S, S, 3] in
    [0, 1]."""
    holes = batch["mask"][..., 0] > 0
    fills = make_baseline(name).inpaint_many(list(batch["image"]), list(holes))
    return np.stack(fills).astype(np.float64) / 255.0


def lpips_scores(
    distance: Callable[[np.ndarray, np.ndarray], np.ndarray],
    completed: np.ndarray,
    batch: dict[str, np.ndarray],
) -> dict[str, float]:
    """Mean LPIPS of `completed` (float [N, S, S, 3] in [0, 1]) against the originals, per mask
    kind and overall; `distance(a, b) -> [N]` (e.g. `models.lpips.LPIPSDistance`)."""
    originals = batch["image"].astype(np.float32) / 255.0
    values = np.asarray(distance(completed.astype(np.float32), originals), np.float64)
    kinds = np.array([MASK_KINDS[i % 3] for i in range(len(values))])
    scores = {"lpips": float(values.mean())}
    for kind in MASK_KINDS:
        scores[f"lpips_{kind}"] = float(values[kinds == kind].mean())
    return scores


def baseline_scores(
    batch: dict[str, np.ndarray],
    distance: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """Hole scores of a flat fill of the known pixels' mean colour, of Telea and of the
    `STRONGER_BASELINES`, and the originals' hole std; with `distance`, the classical methods'
    LPIPS too (`lpips_scores`)."""
    images = batch["image"].astype(np.float64) / 255.0
    holes = batch["mask"][..., 0] > 0
    mean_fill = images.copy()
    for result, image, hole in zip(mean_fill, images, holes, strict=True):
        result[hole] = image[~hole].mean(axis=0)
    scores = {"mean_colour": hole_scores(mean_fill, batch)}
    fills = {"telea": telea_fills(batch)}
    fills.update({name: baseline_fills(batch, name) for name in STRONGER_BASELINES})
    for name, completed in fills.items():
        scores[name] = hole_scores(completed, batch)
        if distance is not None:
            scores[name].update(lpips_scores(distance, completed, batch))
    scores["target"] = {"hole_std": hole_scores(images, batch)["hole_std"]}
    return scores


def object_hole(height: int, width: int, seed: int) -> np.ndarray:
    """An object-sized hole, 5 % of the photo: a box of 0.2 x 0.25 of its sides, away from
    the border, as a user paints over an object to remove."""
    rng = np.random.default_rng(seed)
    side_h, side_w = int(0.2 * height), int(0.25 * width)
    top = int(rng.integers(height // 6, height - side_h - height // 6))
    left = int(rng.integers(width // 6, width - side_w - width // 6))
    hole = np.zeros((height, width), bool)
    hole[top : top + side_h, left : left + side_w] = True
    return hole


def fullsize_holes(height: int, width: int, seed: int) -> dict[str, np.ndarray]:
    """The two holes a user paints on a full photo: an object box (`object_hole`) and
    free-form strokes scaled to the photo (`masks.free_form_mask`)."""
    strokes = masks.free_form_mask(masks.mask_rng(seed, 1), height, width, scale_strokes=True)
    return {"box": object_hole(height, width, seed), "strokes": strokes > 0.5}


def hole_errors(result: np.ndarray, image: np.ndarray, hole: np.ndarray) -> dict[str, float]:
    error = result[hole].astype(np.float64) / 255.0 - image[hole].astype(np.float64) / 255.0
    return {
        "hole_psnr": 10 * np.log10(1.0 / max(float(np.mean(error**2)), 1e-10)),
        "hole_l1_percent": 100 * float(np.mean(np.abs(error))),
    }
