"""Evaluating inpainting methods on photos at their own size, with the holes a user paints.

Protocol (the same photos and holes for every method):
* photos: every image file directly in the folder, sorted by name, used as they are (no crop,
  no resize); a photo that cannot be read is logged, left out and listed in the reports;
* holes: for photo p and each hole kind, one hole drawn from a generator seeded by (seed, p,
  kind): "ellipse" and "box" (`masks.object_mask`: one object-sized hole of 3-8 % of the
  photo's area, wholly inside it) and "strokes" (`masks.free_form_mask` with its lengths and
  widths scaled by the photo's shorter side / 256);
* inputs: every method gets the photo with its hole painted white (`evaluation.HOLE_FILL`);
* metrics, per photo and hole (`score_fill`): hole PSNR (dB) and hole L1 (%) on the hole's
  pixels alone; LPIPS on a square crop around the hole (side `CROP_FACTOR` x the longer side of
  the hole's bounding box, at most the photo's shorter side, shifted inside the photo), both
  crops resized to `LPIPS_SIZE`; the grid excess (`metrics.grid_spread`: how much more the
  means of the polyphase phases inside the hole differ in the fill than in the photo, grey
  levels, periods 2-8) and the colour error (`metrics.hole_colour_error`: CIELAB distance
  between the hole's mean colours); seconds per hole (the method's wall time);
* summaries per hole kind and over all holes: each method's mean with a `CONFIDENCE` percentile
  bootstrap interval over the holes, and each method's paired difference from the reference
  method (the first) with its bootstrap interval over the same resampled holes. A hole PSNR
  that is infinite (an exact fill) is left out of the means and counted.

Outputs: `per_image.csv` (one row per method, photo and hole), `results.md` and `summary.json`;
with `save_images`, every output (and the masked inputs) under `images/<method>/`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats
import tqdm
from absl import logging

from deepgin_jax import image_io, masks, metrics
from deepgin_jax.data.transforms import resize_bicubic
from deepgin_jax.evaluation import (
    FeatureNetworks,
    hole_metrics,
    masked_inputs,
    write_csv,
    write_text,
)
from deepgin_jax.inference import InpainterBase

HOLE_KINDS = ("ellipse", "box", "strokes")
ALL = "all"
CROP_FACTOR = 2.0
LPIPS_SIZE = 256
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
# name -> (label, higher is better, decimals)
METRIC_INFO = {
    "hole_psnr": ("hole PSNR (dB) ↑", True, 2),
    "hole_l1_percent": ("hole L1 (%) ↓", False, 2),
    "lpips_crop": ("LPIPS around the hole ↓", False, 4),
    "grid_excess": ("grid excess (grey levels) ↓", False, 2),
    "colour_error": ("colour error (ΔE) ↓", False, 2),
    "seconds": ("seconds per hole", False, 2),
}
# Reported as means only: timings depend on the machine, not on a sample of photos.
UNCERTAIN_METRICS = ("hole_psnr", "hole_l1_percent", "lpips_crop", "grid_excess", "colour_error")


def photo_hole(kind: str, height: int, width: int, seed: int, photo_index: int) -> np.ndarray:
    """The hole of `kind` (one of `HOLE_KINDS`) for photo `photo_index`: bool [H, W]."""
    if kind not in HOLE_KINDS:
        raise ValueError(f"hole kind must be one of {HOLE_KINDS}, got {kind!r}")
    rng = np.random.default_rng([seed, photo_index, HOLE_KINDS.index(kind)])
    if kind == "strokes":
        hole = masks.free_form_mask(rng, height, width, scale_strokes=True)
    else:
        hole = masks.object_mask(rng, height, width, kind)
    return hole > 0.5


def crop_around(
    hole: np.ndarray, factor: float = CROP_FACTOR, side: int | None = None
) -> tuple[slice, slice]:
    """The square around the hole's bounding box: side `factor` x its longer side, or `side`
    when given (at most the image's shorter side), centred on it and shifted to lie inside the
    image."""
    rows, cols = np.nonzero(hole)
    if rows.size == 0:
        raise ValueError("the hole is empty")
    height, width = hole.shape
    if side is None:
        side = round(factor * max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1))
    side = int(min(max(side, 1), height, width))

    def start(low: int, high: int, size: int) -> int:
        return int(np.clip(round((low + high + 1) / 2 - side / 2), 0, size - side))

    top, left = start(rows.min(), rows.max(), height), start(cols.min(), cols.max(), width)
    return slice(top, top + side), slice(left, left + side)


def lpips_crops(image: np.ndarray, hole: np.ndarray, size: int = LPIPS_SIZE) -> np.ndarray:
    """`crop_around(hole)` of uint8 `image`, resized (bicubic) to uint8 [size, size, 3]."""
    rows, cols = crop_around(hole)
    return resize_bicubic(np.ascontiguousarray(image[rows, cols]), size, size)


def score_fill(result: np.ndarray, original: np.ndarray, hole: np.ndarray) -> dict[str, float]:
    """Every metric but LPIPS of one fill (uint8 [H, W, 3]) of `hole` (bool [H, W])."""
    scores = hole_metrics(result[None], original[None], hole[None])
    return {
        "hole_psnr": float(scores["hole_psnr"][0]),
        "hole_l1_percent": float(scores["hole_l1_percent"][0]),
        "grid_excess": metrics.grid_spread(result, original, hole),
        "colour_error": metrics.hole_colour_error(result, original, hole),
    }


def bootstrap_interval(
    values: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float | None, float | None]:
    """The `CONFIDENCE` percentile bootstrap interval of the mean of `values` (None, None with
    fewer than two; the value itself twice when they are all equal)."""
    values = np.asarray(values, np.float64)
    if values.size < 2:
        return None, None
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    result = scipy.stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=resamples,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


@dataclasses.dataclass(frozen=True)
class _Photo:
    index: int
    path: Path


def evaluate_full_size(
    image_dir: str | os.PathLike,
    methods: Mapping[str, InpainterBase],
    output_dir: str | os.PathLike,
    *,
    hole_kinds: Sequence[str] = HOLE_KINDS,
    seed: int = 0,
    max_images: int | None = None,
    weights_dir: str | os.PathLike | None = None,
    lpips_net: str = "vgg",
    feature_networks: FeatureNetworks | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    save_images: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Runs every method on every photo and hole and writes the reports (module docstring).

    Args:
      methods: name -> inpainter, in report order; the first is the paired differences'
        reference.
      hole_kinds: which of `HOLE_KINDS`.
      weights_dir, lpips_net: where LPIPS is (`FeatureNetworks.from_dir`; FID is not used);
        `feature_networks` replaces them.
      resamples: bootstrap resamples per interval.

    Returns:
      The summary written to `summary.json`.
    """
    if not methods:
        raise ValueError("no methods to evaluate")
    unknown = [k for k in hole_kinds if k not in HOLE_KINDS]
    if unknown or not hole_kinds:
        raise ValueError(f"hole kinds must be some of {', '.join(HOLE_KINDS)}, got {hole_kinds}")
    if resamples < 1:
        raise ValueError(f"resamples must be positive, got {resamples}")
    paths = image_io.list_images(Path(image_dir))[:max_images]
    if not paths:
        raise ValueError(f"no images in {image_dir}")
    if feature_networks is None:
        feature_networks = FeatureNetworks.from_dir(weights_dir, lpips_net)
    distance = feature_networks.lpips
    output_dir = Path(output_dir)
    rows: list[dict[str, Any]] = []
    unreadable: dict[str, str] = {}
    for photo in tqdm.tqdm(
        [_Photo(i, p) for i, p in enumerate(paths)], desc="photos", disable=not progress
    ):
        try:
            original = image_io.read_rgb(photo.path)
        except (ValueError, OSError) as e:
            unreadable[photo.path.name] = " ".join(str(e).split())
            logging.error("Skipped %s: %s", photo.path.name, unreadable[photo.path.name])
            continue
        rows += _evaluate_photo(
            photo, original, methods, hole_kinds, seed, distance, output_dir, save_images
        )
    if not rows:
        name, reason = next(iter(unreadable.items()))
        raise ValueError(
            f"none of the {len(paths)} images in {image_dir} could be read ({name}: {reason}); "
            "give a folder of readable images"
        )
    summary = summarise(rows, list(methods), list(hole_kinds), resamples, seed)
    summary["protocol"] = {
        "images": len(paths) - len(unreadable),
        "hole_kinds": list(hole_kinds),
        "seed": seed,
        "crop_factor": CROP_FACTOR,
        "lpips_size": LPIPS_SIZE if distance is not None else None,
        "bootstrap_resamples": resamples,
        "confidence": CONFIDENCE,
        "unreadable_images": [{"image": k, "error": v} for k, v in unreadable.items()],
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    leading = ["method", "image", "hole", "height", "width", "hole_ratio"]
    write_csv(output_dir / "per_image.csv", rows, leading, METRIC_INFO)
    write_text(output_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    write_text(output_dir / "results.md", results_markdown(summary))
    return summary


def _evaluate_photo(
    photo: _Photo,
    original: np.ndarray,
    methods: Mapping[str, InpainterBase],
    hole_kinds: Sequence[str],
    seed: int,
    distance: Callable[[np.ndarray, np.ndarray], Any] | None,
    output_dir: Path,
    save_images: bool,
) -> list[dict[str, Any]]:
    """The CSV rows of one photo: every method on each of its holes."""
    height, width = original.shape[:2]
    holes = [photo_hole(kind, height, width, seed, photo.index) for kind in hole_kinds]
    inputs = [masked_inputs(original[None], hole[None])[0] for hole in holes]
    if distance is not None:
        original_crops = np.stack([lpips_crops(original, hole) for hole in holes])
    stem = photo.path.stem
    if save_images:
        for kind, masked in zip(hole_kinds, inputs, strict=True):
            image_io.save_image(output_dir / "images" / "masked" / f"{stem}__{kind}.png", masked)
    rows = []
    for name, method in methods.items():
        start = time.perf_counter()
        outputs = [np.asarray(o) for o in method.inpaint_many(inputs, holes)]
        seconds = (time.perf_counter() - start) / len(holes)
        if distance is not None:
            crops = np.stack([lpips_crops(o, h) for o, h in zip(outputs, holes, strict=True)])
            lpips_values = np.asarray(distance(crops, original_crops), np.float64)
        for row, (kind, hole, output) in enumerate(zip(hole_kinds, holes, outputs, strict=True)):
            record = {
                "method": name,
                "image": photo.path.name,
                "hole": kind,
                "height": height,
                "width": width,
                "hole_ratio": round(float(hole.mean()), 6),
                **score_fill(output, original, hole),
            }
            if distance is not None:
                record["lpips_crop"] = float(lpips_values[row])
            record["seconds"] = seconds
            rows.append(record)
            if save_images:
                image_io.save_image(output_dir / "images" / name / f"{stem}__{kind}.png", output)
    return rows


def summarise(
    rows: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    hole_kinds: Sequence[str],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """{'metrics', 'groups', 'reference', 'methods': {name: {group: {'count', metric: {'mean',
    'low', 'high', 'difference', 'difference_low', 'difference_high', 'infinite'}}}}}:
    per method and group (each hole kind, then all), the mean over the group's holes with its
    bootstrap interval, and the paired mean difference from the reference method (the first)
    with its interval. Holes where either value is not finite are left out of a difference."""
    metric_names = [m for m in METRIC_INFO if rows and m in rows[0]]
    groups = [*hole_kinds, ALL] if len(hole_kinds) > 1 else list(hole_kinds)
    reference = methods[0]
    summary: dict[str, Any] = {
        "metrics": metric_names,
        "groups": groups,
        "reference": reference,
        "methods": {},
    }

    def values(method: str, group: str, metric: str) -> dict[tuple[str, str], float]:
        return {
            (r["image"], r["hole"]): float(r[metric])
            for r in rows
            if r["method"] == method and (group == ALL or r["hole"] == group)
        }

    for name in methods:
        entry: dict[str, Any] = {}
        for group in groups:
            cells: dict[str, Any] = {}
            for metric in metric_names:
                mine = values(name, group, metric)
                cells["count"] = len(mine)
                finite = np.array([v for v in mine.values() if math.isfinite(v)])
                cell: dict[str, Any] = {"mean": float(finite.mean()) if finite.size else None}
                if len(finite) < len(mine):
                    cell["infinite"] = len(mine) - len(finite)
                if metric in UNCERTAIN_METRICS:
                    cell["low"], cell["high"] = bootstrap_interval(finite, resamples, seed)
                    if name != reference:
                        theirs = values(reference, group, metric)
                        differences = np.array(
                            [
                                v - theirs[k]
                                for k, v in mine.items()
                                if k in theirs and math.isfinite(v) and math.isfinite(theirs[k])
                            ]
                        )
                        cell["difference"] = float(differences.mean()) if differences.size else None
                        low, high = bootstrap_interval(differences, resamples, seed)
                        cell["difference_low"], cell["difference_high"] = low, high
                cells[metric] = cell
            entry[group] = cells
        summary["methods"][name] = entry
    return summary


def _format(value: float | None, decimals: int) -> str:
    return "n/a" if value is None else f"{value:.{decimals}f}"


def _with_interval(mean: Any, low: Any, high: Any, decimals: int) -> str:
    text = _format(mean, decimals)
    if low is not None and high is not None:
        text += f" [{low:.{decimals}f}, {high:.{decimals}f}]"
    return text


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def results_markdown(summary: Mapping[str, Any]) -> str:
    """Per group: each method's means with their intervals, then the paired differences from
    the reference method."""
    protocol = summary.get("protocol", {})
    metric_names = summary["metrics"]
    reference = summary["reference"]
    percent = round(100 * protocol.get("confidence", CONFIDENCE))
    lines = ["# Inpainting evaluation at full size", ""]
    if protocol:
        lines += [
            f"{protocol['images']} photos at their own size, one hole of each kind per photo "
            f"({', '.join(protocol['hole_kinds'])}; seed {protocol['seed']}). Means over the "
            f"holes with {percent} % bootstrap intervals ({protocol['bootstrap_resamples']} "
            f"resamples); differences are paired, against {reference}. LPIPS on the square "
            f"of {protocol['crop_factor']:g}x the hole's bounding box, resized to "
            f"{protocol['lpips_size']}; grid excess: the spread of the polyphase phase means "
            "inside the hole beyond the photo's, periods 2-8; colour error: CIELAB distance "
            "between the hole's mean colours.",
            "",
        ]
    first = next(iter(summary["methods"].values()))
    for group in summary["groups"]:
        count = first[group]["count"]
        header = ["method", *(METRIC_INFO[m][0] for m in metric_names)]
        table = []
        for name, entry in summary["methods"].items():
            cells = entry[group]
            table.append(
                [
                    name,
                    *(
                        _with_interval(
                            cells[m]["mean"],
                            cells[m].get("low"),
                            cells[m].get("high"),
                            METRIC_INFO[m][2],
                        )
                        for m in metric_names
                    ),
                ]
            )
        lines += [f"## {group} (n={count})", "", *_table(header, table), ""]
        uncertain = [m for m in metric_names if m in UNCERTAIN_METRICS]
        header = ["method", *(f"Δ {METRIC_INFO[m][0]}" for m in uncertain)]
        table = [
            [
                f"{name} − {reference}",
                *(
                    _with_interval(
                        entry[group][m].get("difference"),
                        entry[group][m].get("difference_low"),
                        entry[group][m].get("difference_high"),
                        METRIC_INFO[m][2],
                    )
                    for m in uncertain
                ),
            ]
            for name, entry in summary["methods"].items()
            if name != reference
        ]
        if table:
            lines += [*_table(header, table), ""]
    infinite = [
        f"{name} {group} {m}: {cells[m]['infinite']}"
        for name, entry in summary["methods"].items()
        for group, cells in entry.items()
        for m in summary["metrics"]
        if cells[m].get("infinite")
    ]
    if infinite:
        lines += ["Exact fills (infinite values) left out of the means: " + "; ".join(infinite)]
        lines.append("")
    unreadable = protocol.get("unreadable_images", [])
    if unreadable:
        lines += [f"## Images left out ({len(unreadable)}, unreadable)", ""]
        lines += [f"- {u['image']}: {u['error']}" for u in unreadable] + [""]
    return "\n".join(lines)
