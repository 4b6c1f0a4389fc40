"""Evaluating inpainting methods side by side on an image folder and a fixed mask set.

Protocol (the same pairs for every method):
* images: every image file directly in the folder, sorted by name; each is cropped to its
  central square and, if that square is not `size` pixels, resized to `size` x `size`
  (PIL bicubic, antialiased when shrinking);
* masks: a set written by `python -m deepgin_jax.masks` at `size` x `size`, in index order;
* pairing: image a gets the masks (a*K + k) mod M for k < K (K = masks_per_image, M = the
  set's size): with K = 1, image i meets mask i, cycling through the set; an image that cannot
  be read is logged, left out and listed in the reports (`protocol.unreadable_images`);
* inputs: every method gets the image with its hole painted `HOLE_FILL` (white), never the
  pixels it is scored on (a mask covering the whole image is scored like any other);
* metrics, on the whole composited image against the original: PSNR (dB), SSIM, L1 error (%)
  and LPIPS per pair; on the hole's pixels alone (every channel of every hole pixel, nothing
  else): hole PSNR (dB) and hole L1 error (%), which the known pixels (identical in every
  method's output) cannot dilute; FID per method between its outputs and the originals of
  all pairs, and per mask type when the type has at least `fid_min_count` pairs (the count
  is reported; FID is strongly biased below a few thousand images);
* summaries per mask type and per hole-ratio bucket (0-10%, 10-20%, ..., 50-60%, >60%; a
  ratio on an edge goes to the lower bucket: (0, 10], (10, 20], ...); an output identical to
  the original has an infinite PSNR, left out of the means and counted (`infinite`).

Outputs: `per_image.csv` (one row per method and pair), `results.md` (tables of means),
`summary.json` (the same numbers) and `grid.png` (masked input | each method | original for the
first pairs); with `save_images`, every output under `images/<method>/`.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import itertools
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tqdm
from absl import logging
from PIL import Image, ImageDraw

from deepgin_jax import image_io, masks, metrics
from deepgin_jax.atomic import atomic_write
from deepgin_jax.inference import InpainterBase

BUCKET_EDGES = (0, 10, 20, 30, 40, 50, 60)  # hole ratio in percent; the last bucket is > 60
LPIPS_FILES = {"vgg": "lpips_vgg.npz", "alex": "lpips_alex.npz"}
FID_FILE = "fid_inception.npz"
# name -> (label, higher is better, decimals)
METRIC_INFO = {
    "psnr": ("PSNR (dB) ↑", True, 2),
    "ssim": ("SSIM ↑", True, 4),
    "l1_percent": ("L1 error (%) ↓", False, 3),
    "lpips": ("LPIPS ↓", False, 4),
    "hole_psnr": ("hole PSNR (dB) ↑", True, 2),
    "hole_l1_percent": ("hole L1 error (%) ↓", False, 3),
}
ALL = "all"
HOLE_FILL = 255  # the methods' input in the hole (white, as the network was trained on)


def hole_ratio_bucket(ratio: float) -> str:
    """'0-10%', '10-20%', ..., '50-60%' or '>60%' for a hole ratio in [0, 1]."""
    percent = 100.0 * ratio
    for low, high in itertools.pairwise(BUCKET_EDGES):
        if percent <= high:
            return f"{low}-{high}%"
    return f">{BUCKET_EDGES[-1]}%"


def bucket_names() -> list[str]:
    names = [f"{lo}-{hi}%" for lo, hi in itertools.pairwise(BUCKET_EDGES)]
    return [*names, f">{BUCKET_EDGES[-1]}%"]


@dataclasses.dataclass(frozen=True)
class EvalPair:
    """One image with one mask of the set."""

    image_index: int
    image: str  # file name
    mask_index: int
    mask: str  # file name
    mask_type: str
    hole_ratio: float

    @property
    def bucket(self) -> str:
        return hole_ratio_bucket(self.hole_ratio)


def make_pairs(
    image_names: Sequence[str], manifest: Mapping[str, Any], masks_per_image: int = 1
) -> list[EvalPair]:
    """Image a with masks (a*K + k) mod M, k < K: deterministic and the same for every method."""
    entries = manifest["masks"]
    if not entries:
        raise ValueError("the mask set is empty")
    if masks_per_image < 1:
        raise ValueError(f"masks_per_image must be >= 1, got {masks_per_image}")
    pairs = []
    for a, name in enumerate(image_names):
        for k in range(masks_per_image):
            m = (a * masks_per_image + k) % len(entries)
            entry = entries[m]
            pairs.append(EvalPair(a, name, m, entry["file"], entry["type"], entry["hole_ratio"]))
    return pairs


def center_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """The central square of uint8 [H, W, 3], resized (bicubic) to [size, size, 3] if needed."""
    height, width = rgb.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = rgb[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    resized = Image.fromarray(square).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(resized)


@dataclasses.dataclass(frozen=True)
class FeatureNetworks:
    """The optional learned metrics.

    lpips: (images_a, images_b) [N, H, W, 3] -> [N] distances, or None.
    fid: images [N, H, W, 3] -> [N, D] features, or None.
    """

    lpips: Callable[[np.ndarray, np.ndarray], Any] | None = None
    fid: Callable[[np.ndarray], Any] | None = None

    @classmethod
    def from_dir(
        cls, weights_dir: str | os.PathLike | None, lpips_net: str = "vgg"
    ) -> FeatureNetworks:
        """LPIPS and the FID Inception from the files `python -m deepgin_jax.pretrained`
        writes (`lpips_<net>.npz`, `fid_inception.npz`); a missing file leaves that metric out."""
        if lpips_net not in LPIPS_FILES:
            raise ValueError(f"lpips_net must be one of {sorted(LPIPS_FILES)}, got {lpips_net!r}")
        if weights_dir is None:
            return cls()
        from deepgin_jax.models import inception, lpips

        weights_dir = Path(weights_dir)
        if not weights_dir.is_dir():
            raise ValueError(f"weights folder {weights_dir} does not exist")
        lpips_path = weights_dir / LPIPS_FILES[lpips_net]
        fid_path = weights_dir / FID_FILE
        distance = features = None
        if lpips_path.is_file():
            distance = lpips.LPIPSDistance.from_file(lpips_path)
        else:
            logging.warning("No %s: LPIPS is not computed.", lpips_path)
        if fid_path.is_file():
            features = inception.FIDFeatureExtractor.from_file(fid_path)
        else:
            logging.warning("No %s: FID is not computed.", fid_path)
        return cls(distance, features)


def _padded_call(fn: Callable[..., Any], batch_size: int, *arrays: np.ndarray) -> np.ndarray:
    """fn on arrays padded (by repeating the last row) to `batch_size`, so that one compiled
    shape serves every batch; returns the rows that belong to the real inputs."""
    count = arrays[0].shape[0]
    if count < batch_size:
        arrays = tuple(
            np.concatenate([a, np.repeat(a[-1:], batch_size - count, axis=0)]) for a in arrays
        )
    return np.asarray(fn(*arrays))[:count]


class _FIDSet:
    """Feature statistics of one image set: overall and per mask type."""

    def __init__(self) -> None:
        self.all = None
        self.by_type: dict[str, metrics.FeatureStatistics] = {}

    def add(self, features: np.ndarray, pairs: Sequence[EvalPair]) -> None:
        if self.all is None:
            self.all = metrics.FeatureStatistics(features.shape[1])
        self.all.update(features)
        for mask_type in sorted({p.mask_type for p in pairs}):
            rows = [i for i, p in enumerate(pairs) if p.mask_type == mask_type]
            stats = self.by_type.setdefault(mask_type, metrics.FeatureStatistics(features.shape[1]))
            stats.update(features[rows])


@dataclasses.dataclass
class _MethodRecord:
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    fid: _FIDSet | None = None


def build_methods(
    checkpoints: Sequence[str],
    baselines: Sequence[str] = (),
    *,
    radius: float = 3.0,
    **inpainter_options: Any,
) -> dict[str, InpainterBase]:
    """Methods by name, in order: each checkpoint spec "name=DIR" (or "DIR", named after its
    folder) becomes an `Inpainter.from_checkpoint(DIR, **inpainter_options)`; with no
    checkpoint, the shipped model (named as its card names it, e.g. "DeepGIN-compact"); each
    baseline (one of `baselines.BASELINES`) a `baselines.make_baseline(name, radius)`.

    Raises:
      ValueError: a duplicate name or an unknown baseline.
      shipped.ShippedWeightsError: no checkpoint, and the shipped weights are missing.
    """
    from deepgin_jax import shipped
    from deepgin_jax.baselines import BASELINES, make_baseline
    from deepgin_jax.inference import Inpainter

    specs: list[tuple[str, Callable[[], InpainterBase]]] = []
    if not checkpoints:
        try:
            name = shipped.read_card().get("name", shipped.MODEL_NAME)
        except shipped.ShippedWeightsError:
            name = shipped.MODEL_NAME  # loading it below says what is missing
        specs.append((name, functools.partial(Inpainter.default, **inpainter_options)))
    for spec in checkpoints:
        name, sep, directory = spec.partition("=")
        if not sep:
            name, directory = Path(spec).resolve().name, spec
        if not name or not directory:
            raise ValueError(f"checkpoint spec {spec!r} is not NAME=DIR or DIR")
        make = functools.partial(Inpainter.from_checkpoint, directory, **inpainter_options)
        specs.append((name, make))
    for baseline in baselines:
        if baseline not in BASELINES:
            raise ValueError(f"unknown baseline {baseline!r}; known: {', '.join(BASELINES)}")
        specs.append((baseline, functools.partial(make_baseline, baseline, radius)))
    names = [name for name, _ in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"method names must be unique; repeated: {', '.join(duplicates)}")
    # The baselines first: a bad option of theirs is reported before a slow model load.
    models = len(specs) - len(baselines)
    built = {name: make() for name, make in [*specs[models:], *specs[:models]]}
    return {name: built[name] for name, _ in specs}


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _load_batch(
    pairs: Sequence[EvalPair],
    image_paths: Sequence[Path],
    mask_paths: Sequence[Path],
    size: int,
    unreadable: dict[str, str],
) -> tuple[list[EvalPair], np.ndarray, np.ndarray]:
    """(the pairs whose image could be read, their originals uint8 [B, size, size, 3] and
    holes bool [B, size, size]); an image that cannot be read is logged, added to
    `unreadable` (name -> reason) and its pairs left out."""
    kept, originals, holes = [], [], []
    for pair in pairs:
        if pair.image in unreadable:
            continue
        try:
            rgb = image_io.read_rgb(image_paths[pair.image_index])
        except (ValueError, OSError) as e:
            unreadable[pair.image] = " ".join(str(e).split())
            logging.error("Skipped %s: %s", pair.image, unreadable[pair.image])
            continue
        kept.append(pair)
        originals.append(center_square(rgb, size))
        hole = image_io.load_mask(mask_paths[pair.mask_index])
        if hole.shape != (size, size):
            raise ValueError(
                f"mask {pair.mask} is {hole.shape[1]}x{hole.shape[0]}, not {size}x{size}"
            )
        holes.append(hole)
    if not kept:
        return kept, np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), bool)
    return kept, np.stack(originals), np.stack(holes)


def masked_inputs(originals: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """What every method is given: the originals with their holes painted `HOLE_FILL`, so that
    no method can read the pixels it is scored on."""
    return np.where(holes[..., None], np.uint8(HOLE_FILL), originals)


def _read_mask_set(mask_dir: str | os.PathLike, size: int) -> tuple[dict[str, Any], list[Path]]:
    """`masks.read_mask_set`, or ValueError if the set's masks are not size x size."""
    manifest, mask_paths = masks.read_mask_set(mask_dir)
    if (manifest["height"], manifest["width"]) != (size, size):
        raise ValueError(
            f"the mask set is {manifest['width']}x{manifest['height']} but the evaluation size "
            f"(--size) is {size}; "
            f"write a set with `python -m deepgin_jax.masks --size {size}`"
        )
    return manifest, mask_paths


def _output_name(pair: EvalPair) -> str:
    return f"{Path(pair.image).stem}__{Path(pair.mask).stem}.png"


def evaluate(
    image_dir: str | os.PathLike,
    mask_dir: str | os.PathLike,
    methods: Mapping[str, InpainterBase],
    output_dir: str | os.PathLike,
    *,
    size: int = 256,
    masks_per_image: int = 1,
    max_images: int | None = None,
    weights_dir: str | os.PathLike | None = None,
    lpips_net: str = "vgg",
    feature_networks: FeatureNetworks | None = None,
    batch_size: int = 16,
    fid_min_count: int = 1000,
    grid_count: int = 8,
    save_images: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Runs every method on every pair and writes the reports (module docstring).

    Args:
      methods: name -> inpainter (a DeepGIN `Inpainter` or a baseline), in report order.
      max_images: use only the first images (sorted by name).
      weights_dir, lpips_net: where to find LPIPS and FID weights (`FeatureNetworks.from_dir`);
        `feature_networks` replaces them.
      fid_min_count: the fewest pairs of one mask type for a per-type FID.

    Returns:
      The summary written to `summary.json`.
    """
    if not methods:
        raise ValueError("no methods to evaluate")
    image_paths = image_io.list_images(Path(image_dir))[:max_images]
    if not image_paths:
        raise ValueError(f"no images in {image_dir}")
    manifest, mask_paths = _read_mask_set(mask_dir, size)
    pairs = make_pairs([p.name for p in image_paths], manifest, masks_per_image)
    if feature_networks is None:
        feature_networks = FeatureNetworks.from_dir(weights_dir, lpips_net)
    networks = feature_networks
    output_dir = Path(output_dir)
    records = {name: _MethodRecord() for name in methods}
    reference_fid = _FIDSet() if networks.fid is not None else None
    grid_rows: list[list[np.ndarray]] = []

    unreadable: dict[str, str] = {}
    scored = 0
    bar = tqdm.tqdm(
        total=len(pairs) * len(methods), desc="evaluating", unit="output", disable=not progress
    )
    for batch in _batches(pairs, batch_size):
        batch, originals, holes = _load_batch(batch, image_paths, mask_paths, size, unreadable)
        if not batch:
            continue
        scored += len(batch)
        if reference_fid is not None:
            reference_fid.add(_padded_call(networks.fid, batch_size, originals), batch)
        inputs = masked_inputs(originals, holes)
        outputs = {}
        for name, method in methods.items():
            outputs[name] = np.stack(method.inpaint_many(list(inputs), list(holes)))
            _record(
                records[name], name, batch, outputs[name], originals, holes, networks, batch_size
            )
            if save_images:
                for row, pair in enumerate(batch):
                    path = output_dir / "images" / name / _output_name(pair)
                    image_io.save_image(path, outputs[name][row])
            bar.update(len(batch))
        for row in range(min(len(batch), grid_count - len(grid_rows))):
            grid_rows.append([inputs[row], *(outputs[n][row] for n in methods), originals[row]])
    bar.close()
    if not scored:
        name, reason = next(iter(unreadable.items()))
        raise ValueError(
            f"none of the {len(image_paths)} images in {image_dir} could be read ({name}: "
            f"{reason}); give a folder of readable images"
        )

    summary = _summarise(records, reference_fid, fid_min_count, scored)
    summary["protocol"] = {
        "images": len(image_paths) - len(unreadable),
        "masks": len(mask_paths),
        "pairs": scored,
        "masks_per_image": masks_per_image,
        "size": size,
        "mask_set": {k: manifest[k] for k in ("seed", "type", "count") if k in manifest},
        "unreadable_images": [{"image": k, "error": v} for k, v in unreadable.items()],
    }
    if unreadable:
        logging.warning(
            "%d of %d images could not be read and were left out (listed in results.md): %s",
            len(unreadable),
            len(image_paths),
            ", ".join(unreadable),
        )
    _write_reports(output_dir, summary, records, grid_rows)
    return summary


def _write_reports(
    output_dir: Path,
    summary: Mapping[str, Any],
    records: Mapping[str, _MethodRecord],
    grid_rows: Sequence[Sequence[np.ndarray]],
) -> None:
    """per_image.csv, summary.json, results.md and (with grid rows) grid.png in output_dir."""
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = [r for rec in records.values() for r in rec.rows]
    leading = ["method", "image", "mask", "mask_type", "hole_ratio", "hole_bucket"]
    write_csv(output_dir / "per_image.csv", rows, leading, METRIC_INFO)
    write_text(output_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    write_text(output_dir / "results.md", results_markdown(summary))
    if grid_rows:
        _write_grid(output_dir / "grid.png", grid_rows, ["masked", *records, "original"])


def hole_metrics(
    outputs: np.ndarray, originals: np.ndarray, holes: np.ndarray
) -> dict[str, np.ndarray]:
    """PSNR (dB, data range 1) and L1 error (%) over the hole's pixels alone (all channels):
    {'hole_psnr': [N], 'hole_l1_percent': [N]} for images [N, H, W, 3] (uint8 or [0, 1]) and
    holes bool [N, H, W]. inf PSNR for an exact fill; NaN for an empty hole."""
    outputs = image_io.to_unit_float(outputs).astype(np.float64)
    originals = image_io.to_unit_float(originals).astype(np.float64)
    weight = holes[..., None].astype(np.float64)
    count = weight.sum(axis=(1, 2, 3)) * outputs.shape[-1]
    difference = (outputs - originals) * weight
    with np.errstate(divide="ignore", invalid="ignore"):
        mse = np.square(difference).sum(axis=(1, 2, 3)) / count
        mae = np.abs(difference).sum(axis=(1, 2, 3)) / count
        psnr = np.where(mse > 0, 10.0 * np.log10(1.0 / mse), np.inf)
    return {
        "hole_psnr": np.where(count > 0, psnr, np.nan),
        "hole_l1_percent": 100.0 * mae,
    }


def _score(
    outputs: np.ndarray,
    originals: np.ndarray,
    holes: np.ndarray,
    networks: FeatureNetworks,
    batch_size: int,
) -> dict[str, np.ndarray]:
    scores = {
        name: _padded_call(fn, batch_size, outputs, originals)
        for name, fn in (
            ("psnr", metrics.psnr),
            ("ssim", metrics.ssim),
            ("l1_percent", metrics.l1_error_percent),
        )
    }
    if networks.lpips is not None:
        scores["lpips"] = _padded_call(networks.lpips, batch_size, outputs, originals)
    scores.update(hole_metrics(outputs, originals, holes))
    return scores


def _record(
    record: _MethodRecord,
    method: str,
    pairs: Sequence[EvalPair],
    outputs: np.ndarray,
    originals: np.ndarray,
    holes: np.ndarray,
    networks: FeatureNetworks,
    batch_size: int,
) -> None:
    """Adds one batch of a method's outputs: a CSV row per pair, and FID features."""
    scores = _score(outputs, originals, holes, networks, batch_size)
    record.rows.extend(_row(method, pair, scores, row) for row, pair in enumerate(pairs))
    if networks.fid is not None:
        if record.fid is None:
            record.fid = _FIDSet()
        record.fid.add(_padded_call(networks.fid, batch_size, outputs), pairs)


def _row(method: str, pair: EvalPair, scores: Mapping[str, np.ndarray], row: int) -> dict:
    record = {
        "method": method,
        "image": pair.image,
        "mask": pair.mask,
        "mask_type": pair.mask_type,
        "hole_ratio": pair.hole_ratio,
        "hole_bucket": pair.bucket,
    }
    record.update({name: float(values[row]) for name, values in scores.items()})
    return record


def _fid(a: metrics.FeatureStatistics, b: metrics.FeatureStatistics) -> float | None:
    if a.count < 2 or b.count < 2:
        return None
    try:
        return metrics.fid_from_stats(a, b)
    except ValueError as e:
        logging.warning("FID could not be computed (%s)", e)
        return None


def _mean(rows: Sequence[Mapping[str, Any]], metric: str) -> float | None:
    """The mean of the finite values (an exact output's PSNR is infinite: `_infinite` counts
    those, and the report states them)."""
    finite = [r[metric] for r in rows if metric in r and math.isfinite(r[metric])]
    return float(np.mean(finite)) if finite else None


def _infinite(rows: Sequence[Mapping[str, Any]], metrics_: Sequence[str]) -> dict[str, int]:
    """{metric: how many rows have it infinite (identical to the original)}, nonzero only."""
    counts = {m: sum(1 for r in rows if m in r and math.isinf(r[m])) for m in metrics_}
    return {m: n for m, n in counts.items() if n}


def _summarise(
    records: Mapping[str, _MethodRecord],
    reference_fid: _FIDSet | None,
    fid_min_count: int,
    pair_count: int,
) -> dict[str, Any]:
    """{'methods': {name: {'by_type': {type: {metric: mean, 'count': n}}, 'by_bucket': ...,
    'fid': {group: {'fid': value, 'count': n}}}}, 'metrics': [...], 'mask_types': [...],
    'buckets': [...]}."""
    any_rows = next(iter(records.values())).rows
    metric_names = [m for m in METRIC_INFO if any_rows and m in any_rows[0]]
    mask_types = sorted({r["mask_type"] for r in any_rows})
    buckets = [b for b in bucket_names() if any(r["hole_bucket"] == b for r in any_rows)]
    summary: dict[str, Any] = {
        "metrics": metric_names,
        "mask_types": mask_types,
        "buckets": buckets,
        "methods": {},
    }
    for name, record in records.items():
        groups = {"by_type": {ALL: record.rows}, "by_bucket": {}}
        for mask_type in mask_types:
            groups["by_type"][mask_type] = [r for r in record.rows if r["mask_type"] == mask_type]
        for bucket in buckets:
            groups["by_bucket"][bucket] = [r for r in record.rows if r["hole_bucket"] == bucket]
        entry: dict[str, Any] = {}
        for kind, grouped in groups.items():
            entry[kind] = {
                group: {"count": len(rows), **{m: _mean(rows, m) for m in metric_names}}
                for group, rows in grouped.items()
            }
        if infinite := _infinite(record.rows, metric_names):
            entry["infinite"] = infinite
            logging.warning(
                "%s: outputs identical to the original (infinite %s) left out of the means: %s",
                name,
                "/".join(infinite),
                ", ".join(f"{m} {n}" for m, n in infinite.items()),
            )
        if reference_fid is not None and record.fid is not None:
            fid = {ALL: {"fid": _fid(record.fid.all, reference_fid.all), "count": pair_count}}
            for mask_type, stats in sorted(record.fid.by_type.items()):
                if stats.count >= fid_min_count:
                    value = _fid(stats, reference_fid.by_type[mask_type])
                    fid[mask_type] = {"fid": value, "count": stats.count}
            entry["fid"] = fid
        summary["methods"][name] = entry
    return summary


def _format(value: float | None, decimals: int) -> str:
    return "n/a" if value is None else f"{value:.{decimals}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def results_markdown(summary: Mapping[str, Any]) -> str:
    """The Markdown report: per metric, methods x mask types and methods x hole-ratio buckets
    (means, pair counts in the headers), then FID."""
    methods = summary["methods"]
    first = next(iter(methods.values()))
    protocol = summary.get("protocol", {})
    lines = ["# Inpainting evaluation", ""]
    if protocol:
        lines += [
            f"{protocol['pairs']} image-mask pairs: {protocol['images']} images "
            f"(central square, {protocol['size']}x{protocol['size']}) x "
            f"{protocol['masks_per_image']} mask(s) each from a set of {protocol['masks']}; "
            "PSNR, SSIM, L1 and LPIPS on the whole composited image; hole PSNR and hole L1 "
            "on the hole's pixels alone.",
            "",
        ]
    for metric in summary["metrics"]:
        label, _, decimals = METRIC_INFO[metric]
        for kind, groups, title in (
            ("by_type", [ALL, *summary["mask_types"]], "mask type"),
            ("by_bucket", summary["buckets"], "hole ratio"),
        ):
            header = ["method"] + [f"{g} (n={first[kind][g]['count']})" for g in groups]
            rows = [
                [name] + [_format(entry[kind][g][metric], decimals) for g in groups]
                for name, entry in methods.items()
            ]
            lines += [f"## {label} by {title}", "", *_table(header, rows), ""]
    infinite = {name: e["infinite"] for name, e in methods.items() if e.get("infinite")}
    if infinite:
        counts = "; ".join(
            f"{name}: " + ", ".join(f"{n} {m}" for m, n in c.items())
            for name, c in infinite.items()
        )
        lines += [
            f"Outputs identical to the original have an infinite PSNR, left out of its means: "
            f"{counts}.",
            "",
        ]
    unreadable = protocol.get("unreadable_images", [])
    if unreadable:
        lines += [f"## Images left out ({len(unreadable)}, unreadable)", ""]
        lines += [f"- {u['image']}: {u['error']}" for u in unreadable] + [""]
    if "fid" in first:
        groups = [ALL, *[t for t in summary["mask_types"] if t in first["fid"]]]
        header = ["method"] + [f"{g} (n={first['fid'][g]['count']})" for g in groups]
        rows = [
            [name] + [_format(entry["fid"].get(g, {}).get("fid"), 3) for g in groups]
            for name, entry in methods.items()
        ]
        lines += ["## FID ↓", "", *_table(header, rows), ""]
        lines += [
            "FID compares each method's outputs with the original images of the same pairs; "
            "below a few thousand pairs it is biased upwards and only comparable between "
            "methods of the same run.",
            "",
        ]
    return "\n".join(lines)


def write_text(path: Path, text: str) -> None:
    """`text` to `path`, atomically (a reader never sees half a file)."""
    with atomic_write(path, "w") as f:
        f.write(text)


def write_csv(
    path: Path,
    rows: Sequence[Mapping[str, Any]],
    leading: Sequence[str],
    metric_info: Mapping[str, Any],
) -> None:
    """`rows` as CSV: the `leading` columns, then each metric of `metric_info` the rows have."""
    columns = [*leading, *(m for m in metric_info if rows and m in rows[0])]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def _write_grid(path: Path, rows: Sequence[Sequence[np.ndarray]], labels: Sequence[str]) -> None:
    """Rows of equally sized uint8 images under a header of column labels, 4 px apart."""
    size = rows[0][0].shape[0]
    gap, header = 4, 16
    width = len(labels) * (size + gap) - gap
    height = header + len(rows) * (size + gap) - gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for col, label in enumerate(labels):
        draw.text((col * (size + gap) + 2, 2), label[: max(1, size // 6)], fill=(0, 0, 0))
    for r, images in enumerate(rows):
        for col, image in enumerate(images):
            canvas.paste(Image.fromarray(image), (col * (size + gap), header + r * (size + gap)))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    with atomic_write(path, "wb") as f:
        f.write(buffer.getvalue())
