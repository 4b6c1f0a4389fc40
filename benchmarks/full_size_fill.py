"""Photos at their own size with object-sized holes and brush strokes: the shipped model's
large-image paths against OpenCV Telea.

    python -m benchmarks.full_size_fill --photos /path/to/photos --count 54 --seed 0

Per photo two cases, seeded: an object hole (an ellipse on even photos, a box on odd ones, 3-8 %
of the photo's area, random aspect and position) and free-form strokes scaled to the photo
(`masks.free_form_mask`). Scores, inside the hole: PSNR and L1 (0-255 scale, L1 in % of 255);
LPIPS (VGG, `--lpips` file) on a square around the hole resized to 256; the grid (`grid_excess`:
the largest, over periods 2..8, spread of the polyphase phase means of the hole's grey levels
beyond the original's); the colour cast (`mean_colour_error`: CIELAB distance between the
hole's mean colour and the original's) and how far it exceeds Telea's on the same case. A
second table pairs each method with each of `--against` photo by photo (`paired_summary`:
mean differences of hole PSNR and LPIPS with 95 % bootstrap intervals over the photos).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from absl import app, flags

from deepgin_jax import compile_cache, masks
from deepgin_jax.baselines import BASELINES, make_baseline
from deepgin_jax.full_size_evaluation import bootstrap_interval
from deepgin_jax.image_io import read_rgb
from deepgin_jax.inference import Inpainter

PERIODS = tuple(range(2, 9))
PAIRED_RESAMPLES = 10_000  # bootstrap resamples of the photos per paired interval
TEXT_COLUMNS = ("photo", "kind", "method")
LPIPS_SIDE = 256


def object_hole(rng: np.random.Generator, height: int, width: int, kind: str) -> np.ndarray:
    """bool [H, W]: an ellipse or box of 3-8 % of the area, aspect 0.6-1.6, inside the photo."""
    area = rng.uniform(0.03, 0.08) * height * width
    aspect = rng.uniform(0.6, 1.6)
    if kind == "ellipse":  # semi-axes a (x) and b (y): pi a b = area
        b = np.sqrt(area / (np.pi * aspect))
        a = aspect * b
        cy, cx = rng.uniform(b + 2, height - b - 2), rng.uniform(a + 2, width - a - 2)
        hole = np.zeros((height, width), np.uint8)
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(hole, (round(cx), round(cy)), (round(a), round(b)), angle, 0, 360, 1, -1)
        return hole.astype(bool)
    h = round(np.sqrt(area / aspect))
    w = round(aspect * h)
    top, left = int(rng.integers(1, height - h - 1)), int(rng.integers(1, width - w - 1))
    hole = np.zeros((height, width), bool)
    hole[top : top + h, left : left + w] = True
    return hole


def stroke_hole(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """bool [H, W]: free-form strokes scaled to the photo's short side."""
    return masks.free_form_mask(rng, height, width, scale_strokes=True) > 0.5


def grey(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def phase_spread(rgb: np.ndarray, hole: np.ndarray, period: int) -> float:
    """max - min over the period x period polyphase phases (pixel (y, x) in phase
    (y % P, x % P)) of the phase's mean grey level over hole pixels (0-255)."""
    rows, cols = np.nonzero(hole)
    values = grey(rgb[rows, cols])
    phase = (rows % period) * period + cols % period
    sums = np.bincount(phase, values, period * period)
    counts = np.bincount(phase, minlength=period * period)
    means = sums[counts > 0] / counts[counts > 0]
    return float(means.max() - means.min())


def grid_excess(result: np.ndarray, original: np.ndarray, hole: np.ndarray) -> float:
    """The largest, over periods 2..8, phase spread of `result` beyond the original's."""
    return max(phase_spread(result, hole, p) - phase_spread(original, hole, p) for p in PERIODS)


def detrended_spread(rgb: np.ndarray, hole: np.ndarray, period: int) -> float:
    """`phase_spread` of the grey levels minus their mean over the period x period window
    around each pixel: that mean holds every phase once, so a pattern of this period is kept
    whole and a smooth shading (which moves the phase means of a hole whose side is not a
    multiple of the period apart) is removed."""
    values = grey(rgb)
    local = cv2.blur(values, (period, period), borderType=cv2.BORDER_REFLECT)
    rows, cols = np.nonzero(hole)
    phase = (rows % period) * period + cols % period
    residual = (values - local)[rows, cols]
    sums = np.bincount(phase, residual, period * period)
    counts = np.bincount(phase, minlength=period * period)
    means = sums[counts > 0] / counts[counts > 0]
    return float(means.max() - means.min())


def detrended_grid_excess(result: np.ndarray, original: np.ndarray, hole: np.ndarray) -> float:
    """`grid_excess` on `detrended_spread`: a grid, not a gradient across the hole."""
    return max(
        detrended_spread(result, hole, p) - detrended_spread(original, hole, p) for p in PERIODS
    )


def lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB -> CIELAB (cv2 on float32 in [0, 1]: L in 0-100)."""
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def mean_colour_error(result: np.ndarray, original: np.ndarray, hole: np.ndarray) -> float:
    """CIELAB distance between the mean colour (in Lab) of the hole in `result` and in
    `original`."""
    return float(np.linalg.norm(lab(result)[hole].mean(axis=0) - lab(original)[hole].mean(axis=0)))


def hole_square(hole: np.ndarray) -> tuple[slice, slice]:
    """A square around the hole's bounding box (1.25 times its long side, at least 64 px),
    inside the photo."""
    rows, cols = np.flatnonzero(hole.any(axis=1)), np.flatnonzero(hole.any(axis=0))
    side = max(64, round(1.25 * max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)))
    side = min(side, *hole.shape)
    window = []
    for values, limit in ((rows, hole.shape[0]), (cols, hole.shape[1])):
        first = (values[0] + values[-1] + 1 - side) // 2
        first = int(np.clip(first, 0, limit - side))
        window.append(slice(first, first + side))
    return window[0], window[1]


def square_for_lpips(rgb: np.ndarray, hole: np.ndarray) -> np.ndarray:
    rows, cols = hole_square(hole)
    square = np.ascontiguousarray(rgb[rows, cols])
    return cv2.resize(square, (LPIPS_SIDE, LPIPS_SIDE), interpolation=cv2.INTER_AREA)


@dataclasses.dataclass
class Case:
    photo: str
    kind: str
    original: np.ndarray
    hole: np.ndarray


def make_cases(photos: Sequence[Path], seed: int, start: int = 0) -> list[Case]:
    """Two cases per photo; the holes of photo k (its index among all photos) depend on
    (seed, k) alone, so shards (`start`) draw the same holes as one run."""
    cases = []
    for index, path in enumerate(photos, start):
        original = read_rgb(path)
        height, width = original.shape[:2]
        rng = np.random.default_rng([seed, index])
        kind = "ellipse" if index % 2 == 0 else "box"
        cases.append(Case(path.name, kind, original, object_hole(rng, height, width, kind)))
        cases.append(Case(path.name, "strokes", original, stroke_hole(rng, height, width)))
    return cases


def methods(names: Sequence[str]) -> dict[str, object]:
    """Name -> an inpainter with `inpaint(image, mask)`."""
    table = {
        **{name: functools.partial(make_baseline, name) for name in BASELINES},
        "polyphase": lambda: Inpainter(strategy="polyphase"),
        "scaled:one-pass": lambda: _without_strokes_path(Inpainter(strategy="scaled")),
        "scaled": lambda: Inpainter(strategy="scaled"),
        "scaled:polyphase-strokes": lambda: Inpainter(strategy="scaled", stroke_fill="polyphase"),
        "scaled:no-detail": lambda: Inpainter(strategy="scaled", detail=False),
        "scaled:no-colour": lambda: Inpainter(strategy="scaled", colour_match=False),
        "scaled:factor-2": lambda: Inpainter(strategy="scaled", crop_factor=2.0),
        "scaled:128": lambda: Inpainter(strategy="scaled", scaled_size=128),
        "scaled:paste": lambda: Inpainter(strategy="scaled", blend="paste"),
    }
    return {name: table[name]() for name in names}


def _without_strokes_path(inpainter: Inpainter) -> Inpainter:
    """The "scaled" strategy with every box downscaled and filled in one pass, strokes too."""
    inpainter._planner = dataclasses.replace(inpainter._planner, strokes=False)
    return inpainter


def score(
    cases: Sequence[Case],
    inpainters: dict[str, object],
    lpips_path: str | None,
    csv_path: str | None = None,
) -> list[dict]:
    """The rows of every (case, method); each row is also appended to `csv_path` as it comes,
    so an interrupted run keeps what it measured."""
    distance = None
    if lpips_path:
        from deepgin_jax.models.lpips import LPIPSDistance

        distance = LPIPSDistance.from_file(lpips_path)
    rows = []
    for case in cases:
        for name, inpainter in inpainters.items():
            start = time.perf_counter()
            result = inpainter.inpaint(case.original, case.hole)
            seconds = time.perf_counter() - start
            hole, original = case.hole, case.original
            error = result[hole].astype(np.float64) - original[hole]
            mse = float(np.mean(error**2))
            row = {
                "photo": case.photo,
                "kind": _kind(case),
                "method": name,
                "psnr": 10 * np.log10(255.0**2 / max(mse, 1e-10)),
                "l1": float(np.mean(np.abs(error))) / 255.0 * 100,
                "grid": grid_excess(result, original, hole),
                "grid_detrended": detrended_grid_excess(result, original, hole),
                "colour": mean_colour_error(result, original, hole),
                "seconds": seconds,
            }
            if distance is not None:
                a = square_for_lpips(result, hole)[None]
                b = square_for_lpips(original, hole)[None]
                row["lpips"] = float(distance(a, b)[0])
            rows.append(row)
            if csv_path:
                _append_csv(csv_path, row)
            print(f"{case.photo} {case.kind} {name}: {row['psnr']:.2f} dB", file=sys.stderr)
    return rows


def _kind(case: Case) -> str:
    """The row's kind: "object" (ellipse or box) or "strokes"."""
    return "object" if case.kind != "strokes" else "strokes"


def summary(rows: list[dict], names: Sequence[str]) -> str:
    """The table per (hole kind, method); "over" columns count the holes above the goals (grid
    0.25 grey levels, colour 2.3 CIELAB units beyond Telea's on the same hole)."""
    lines = [
        "| holes | method | cases | hole PSNR | hole L1 % | LPIPS | PSNR > Telea | grid, worst "
        "(over 0.25) | detrended grid, worst (over) | colour dE | worst dE - Telea's (over 2.3) "
        "| s/case |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in ("object", "strokes"):
        telea = {r["photo"]: r for r in rows if r["kind"] == kind and r["method"] == "telea"}
        for name in names:
            mine = [r for r in rows if r["kind"] == kind and r["method"] == name]
            if not mine:
                continue
            paired = [r for r in mine if r["photo"] in telea]
            wins = sum(r["psnr"] > telea[r["photo"]]["psnr"] for r in paired)
            excess = [r["colour"] - telea[r["photo"]]["colour"] for r in paired] or [0.0]
            lp = f"{np.mean([r['lpips'] for r in mine]):.3f}" if "lpips" in mine[0] else "-"
            grids = [r["grid"] for r in mine]
            detrended = [r.get("grid_detrended", np.nan) for r in mine]
            lines.append(
                f"| {kind} | {name} | {len(mine)} | {np.mean([r['psnr'] for r in mine]):.2f} | "
                f"{np.mean([r['l1'] for r in mine]):.2f} | {lp} | {wins}/{len(paired)} | "
                f"{max(grids):.2f} ({sum(g > 0.25 for g in grids)}) | "
                f"{max(detrended):.2f} ({sum(g > 0.25 for g in detrended)}) | "
                f"{np.mean([r['colour'] for r in mine]):.2f} | "
                f"{max(excess):+.2f} ({sum(e > 2.3 for e in excess)}) | "
                f"{np.mean([r['seconds'] for r in mine]):.2f} |"
            )
    return "\n".join(lines)


def _paired(mine: list[dict], theirs: dict[str, dict], key: str) -> str:
    """Mean of `key` minus the other method's on the same photos, with its 95 % bootstrap
    interval over the photos (`PAIRED_RESAMPLES`)."""
    differences = [r[key] - theirs[r["photo"]][key] for r in mine if r["photo"] in theirs]
    if not differences:
        return "-"
    low, high = bootstrap_interval(np.array(differences), PAIRED_RESAMPLES)
    interval = "" if low is None else f" [{low:+.3f}, {high:+.3f}]"
    return f"{np.mean(differences):+.3f}{interval}"


def paired_summary(rows: list[dict], names: Sequence[str], against: Sequence[str]) -> str:
    """The table of each method's paired differences (hole PSNR, LPIPS) from each method in
    `against`, per hole kind, with 95 % bootstrap intervals over the photos."""
    lines = [
        "| holes | method | against | photos | hole PSNR difference [95 % CI] "
        "| LPIPS difference [95 % CI] |",
        "|---|---|---|---|---|---|",
    ]
    for kind in ("object", "strokes"):
        for other in against:
            theirs = {r["photo"]: r for r in rows if r["kind"] == kind and r["method"] == other}
            for name in names:
                mine = [r for r in rows if r["kind"] == kind and r["method"] == name]
                if name == other or not mine or not theirs:
                    continue
                count = sum(r["photo"] in theirs for r in mine)
                lp = _paired(mine, theirs, "lpips") if "lpips" in mine[0] else "-"
                lines.append(
                    f"| {kind} | {name} | {other} | {count} | {_paired(mine, theirs, 'psnr')} "
                    f"| {lp} |"
                )
    return "\n".join(lines)


def _append_csv(path: str, row: dict) -> None:
    new = not Path(path).exists()
    with open(path, "a", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def read_rows(paths: Sequence[str]) -> list[dict]:
    rows = []
    for path in paths:
        with open(path, newline="") as file:
            for row in csv.DictReader(file):
                numbers = {k: float(v) for k, v in row.items() if k not in TEXT_COLUMNS}
                rows.append({**row, **numbers})
    return rows


def main(argv: Sequence[str]) -> None:
    del argv
    names = FLAGS.methods
    if FLAGS.summarise:  # the table of earlier runs' --csv files (shards of one run)
        rows = read_rows(FLAGS.summarise)
        photos = {row["photo"] for row in rows}
        print(f"{len(photos)} photos, {len(rows) // len(names)} cases, from {FLAGS.summarise}")
        print(summary(rows, names))
        print(paired_summary(rows, names, FLAGS.against))
        return
    if not FLAGS.photos:
        raise app.UsageError("--photos is required (or --summarise)")
    compile_cache.enable()
    photos = sorted(Path(FLAGS.photos).glob("*.jpg"))[FLAGS.start : FLAGS.start + FLAGS.count]
    if not photos:
        raise app.UsageError(f"no *.jpg in {FLAGS.photos} from {FLAGS.start}")
    cases = make_cases(photos, FLAGS.seed, FLAGS.start)
    cases = [case for case in cases if _kind(case) in FLAGS.kinds]
    if FLAGS.csv and Path(FLAGS.csv).exists():
        raise app.UsageError(f"{FLAGS.csv} exists; rows are appended to it as they come")
    rows = score(cases, methods(names), FLAGS.lpips, FLAGS.csv)
    print(f"{len(photos)} photos, {len(cases)} cases, seed {FLAGS.seed}")
    print(summary(rows, names))
    print(paired_summary(rows, names, FLAGS.against))


FLAGS = flags.FLAGS

if __name__ == "__main__":
    flags.DEFINE_string("photos", None, "Folder of *.jpg photos.")
    flags.DEFINE_integer("count", 54, "How many photos (sorted by name).")
    flags.DEFINE_integer("start", 0, "The first photo's index (a shard of a longer run).")
    flags.DEFINE_list("summarise", None, "Print the table of these --csv files and exit.")
    flags.DEFINE_integer("seed", 0, "Seed of the holes.")
    flags.DEFINE_list(
        "methods",
        ["telea", "polyphase", "scaled", "scaled:no-detail", "scaled:no-colour"],
        "Methods to compare (comma-separated, from `methods`).",
    )
    flags.DEFINE_list("kinds", ["object", "strokes"], "Hole kinds to run (object, strokes).")
    flags.DEFINE_list(
        "against",
        ["telea"],
        "Methods each method's paired differences are measured from (with bootstrap intervals).",
    )
    flags.DEFINE_string("lpips", None, "lpips_vgg.npz (python -m deepgin_jax.pretrained).")
    flags.DEFINE_string("csv", None, "Write the per-case rows here.")
    app.run(main)
