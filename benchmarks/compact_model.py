"""The figures of the README's "Results" for a DeepGIN-compact training run.

    # hole PSNR on held-out crops of every kept checkpoint, and the training loss: JSON + PNG
    python -m benchmarks.compact_model curves --workdir=~/runs/compact \
        --snapshots=~/eval/snapshots --heldout=PHOTOS/eval --lpips=weights/lpips_vgg.npz
    # full photos as a user has them: masked | Telea | biharmonic | the model | original,
    # then the three fills and the original around the hole at 100 %
    python -m benchmarks.compact_model grid --checkpoint=shipped --photos=PHOTOS/eval \
        --output=docs/results_grid.jpg
    # the same photos scored inside the hole, for each Inpainter tile size, beside Telea,
    # biharmonic and FSR_FAST
    python -m benchmarks.compact_model fullsize --checkpoint=shipped --photos=PHOTOS/eval \
        --tile_sizes=128,256

`--snapshots` is a folder of checkpoint steps (`<step>/generator`, `<step>/meta`): a training
run keeps only its last few, so a copy of every 500th is made while it trains. Held-out crops
are the centre squares of the photos resized to `--size`, with the three mask kinds each
(`benchmarks.initialisation.masked_crops`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np
from absl import app, flags

from benchmarks import common
from benchmarks.heldout import (
    STRONGER_BASELINES,
    baseline_scores,
    fullsize_holes,
    hole_errors,
    hole_scores,
    lpips_scores,
    masked_crops,
)
from deepgin_jax import image_io, masks, metric_writers, shipped
from deepgin_jax.baselines import make_baseline
from deepgin_jax.data.sources import list_image_files
from deepgin_jax.data.transforms import resize_bicubic
from deepgin_jax.full_size_evaluation import crop_around
from deepgin_jax.inference import Inpainter
from deepgin_jax.models.lpips import LPIPSDistance
from deepgin_jax.train_steps import prepare_batch

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir (curves: its metrics.jsonl).")
flags.DEFINE_string("snapshots", None, "Folder of checkpoint steps to evaluate (curves).")
flags.DEFINE_string("heldout", None, "Held-out photos (curves).")
flags.DEFINE_string("lpips", None, "lpips_vgg.npz: LPIPS per checkpoint too (curves).")
flags.DEFINE_integer("size", 128, "Held-out crop size (curves).")
flags.DEFINE_integer("heldout_images", 54, "Held-out photos, three masks each (curves).")
flags.DEFINE_string("checkpoint", "shipped", "The model (grid): 'shipped' or a checkpoint.")
flags.DEFINE_string("photos", None, "Photos to inpaint (grid).")
flags.DEFINE_list("picks", ["0", "9", "21", "40"], "Which photos of --photos (grid), by index.")
flags.DEFINE_integer("row_height", 240, "Height of each grid row in pixels (grid).")
flags.DEFINE_list("tile_sizes", ["128", "256"], "Inpainter tile sizes to compare (fullsize).")
flags.DEFINE_string("output", None, "Grid image, or the curves PNG (default: beside the table).")
flags.DEFINE_string(
    "out", str(Path(__file__).resolve().parent / "results"), "Where to write the tables."
)


def evaluate_snapshots(
    snapshots: Path, heldout: dict[str, np.ndarray], distance: Callable | None = None
) -> list[dict]:
    """Hole scores (and, with an LPIPS `distance`, LPIPS) of every checkpoint step folder in
    `snapshots` on the held-out crops, in step order."""
    step_dirs = sorted(
        (p for p in snapshots.iterdir() if p.is_dir() and p.name.isdigit()),
        key=lambda p: int(p.name),
    )  # names that are not steps (a copy still being made: `<step>.tmp`) are skipped
    if not step_dirs:
        raise FileNotFoundError(f"no checkpoint step folders (<step>/generator) in {snapshots}")
    rows = []
    target, mask, masked = prepare_batch(jax.tree.map(np.asarray, heldout))
    for step_dir in step_dirs:
        model, variables = shipped.load_generator(step_dir)
        completed = jax.jit(model.apply)(variables, masked, mask, target).completed
        completed = np.clip(np.asarray(completed), 0, 1)
        rows.append({"step": int(step_dir.name), **hole_scores(completed, heldout)})
        if distance is not None:
            rows[-1].update(lpips_scores(distance, completed, heldout))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def plot_curves(losses: list[dict], rows: list[dict], baselines: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_lpips = "lpips" in rows[0]
    figure, axes = plt.subplots(1, 3 if with_lpips else 2, figsize=(16 if with_lpips else 11, 3.8))
    left, right = axes[:2]
    steps = np.array([r["step"] for r in losses])
    values = np.array([r["g_loss"] for r in losses])
    window = 20
    smooth = np.convolve(values, np.ones(window) / window, mode="valid")
    left.plot(steps, values, color="0.8", linewidth=0.6, label="logged")
    left.plot(steps[window - 1 :], smooth, color="C0", label=f"mean of {window}")
    left.set(xlabel="step", ylabel="generator loss", yscale="log")
    left.legend(fontsize=8)
    _plot_per_kind(right, rows, baselines["telea"], "hole_psnr")
    right.set(xlabel="step", ylabel="hole PSNR (dB), held-out crops")
    right.legend(fontsize=7, ncol=2)
    if with_lpips:
        _plot_per_kind(axes[2], rows, baselines["telea"], "lpips")
        axes[2].set(xlabel="step", ylabel="LPIPS (VGG) ↓, held-out crops")
        axes[2].legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def _plot_per_kind(axis, rows: list[dict], telea: dict, metric: str) -> None:
    """`metric`_<kind> of the model against the step, with Telea's as a dashed line."""
    for index, kind in enumerate(("rect", "ca", "freeform")):
        colour = f"C{index}"
        steps = [r["step"] for r in rows]
        axis.plot(
            steps,
            [r[f"{metric}_{kind}"] for r in rows],
            "o-",
            color=colour,
            label=f"DeepGIN-compact, {kind}",
        )
        axis.axhline(
            telea[f"{metric}_{kind}"],
            color=colour,
            linestyle="--",
            linewidth=0.8,
            label=f"Telea, {kind}",
        )


def curves() -> None:
    photos = list_image_files(FLAGS.heldout)[: FLAGS.heldout_images]
    heldout = masked_crops(photos, FLAGS.size, seed=1)
    distance = LPIPSDistance.from_file(FLAGS.lpips) if FLAGS.lpips else None
    baselines = baseline_scores(heldout, distance)
    rows = evaluate_snapshots(Path(FLAGS.snapshots).expanduser(), heldout, distance)
    losses = [
        r for r in metric_writers.read_metrics(Path(FLAGS.workdir).expanduser()) if "g_loss" in r
    ]
    table = common.write_results(
        "compact_curves",
        [*rows, *({"step": name, **scores} for name, scores in baselines.items())],
        [
            "step",
            "hole_psnr",
            "hole_psnr_rect",
            "hole_psnr_ca",
            "hole_psnr_freeform",
            "hole_std",
            *(["lpips", "lpips_rect", "lpips_ca", "lpips_freeform"] if distance else []),
        ],
        FLAGS.out,
    )
    output = Path(FLAGS.output) if FLAGS.output else table.with_suffix(".png")
    plot_curves(losses, rows, baselines, output)


GRID_METHODS = ("telea", "biharmonic")  # the classical fills beside the model in the grid


def grid() -> None:
    """Full photos with an object hole (an ellipse of 3-8 % of the photo): masked | Telea |
    biharmonic | the model | original, scaled to `--row_height`, then the same four fills
    as `--row_height`-pixel crops around the hole at 100 % (no resampling)."""
    inpainter = Inpainter.from_checkpoint(
        None if FLAGS.checkpoint == "shipped" else FLAGS.checkpoint
    )
    baselines = {name: make_baseline(name) for name in GRID_METHODS}
    photos = list_image_files(FLAGS.photos)
    height = FLAGS.row_height
    gap = np.full((height, 4, 3), 255, np.uint8)
    rows = []
    for pick in FLAGS.picks:
        path = photos[int(pick)]
        image = image_io.read_rgb(path)
        rng = masks.mask_rng(int(pick), 0)
        hole = masks.object_mask(rng, *image.shape[:2], "ellipse") > 0.5
        fills = [baselines[name].inpaint(image, hole) for name in GRID_METHODS]
        fills.append(inpainter.inpaint(image, hole))
        masked = np.where(hole[..., None], 255, image).astype(np.uint8)
        width = round(image.shape[1] * height / image.shape[0])
        whole = [resize_bicubic(p, height, width) for p in (masked, *fills, image)]
        window = crop_around(hole, side=height)
        crops = [np.asarray(p)[window] for p in (*fills, image)]
        crops = [np.pad(c, ((0, height - c.shape[0]), (0, 0), (0, 0))) for c in crops]
        panels = [*whole, *crops]
        rows.append(np.concatenate([x for p in panels for x in (p, gap)][:-1], axis=1))
        print(f"{path.name} {image.shape[1]}x{image.shape[0]}, hole {hole.mean():.1%}")
    width = max(r.shape[1] for r in rows)
    padded = [
        np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows
    ]
    image_io.save_image(FLAGS.output, np.concatenate(padded, axis=0))


def fullsize() -> None:
    """Hole PSNR and L1 on whole photos at their own size, per hole kind, for the model at
    each `--tile_sizes` (the Inpainter's defaults otherwise), OpenCV Telea and the
    `STRONGER_BASELINES`."""
    import cv2

    checkpoint = None if FLAGS.checkpoint == "shipped" else FLAGS.checkpoint
    methods = {
        f"tile {size}": Inpainter.from_checkpoint(checkpoint, tile_size=int(size)).inpaint
        for size in FLAGS.tile_sizes
    }
    methods["telea"] = lambda image, hole: cv2.inpaint(
        image, hole.astype(np.uint8) * 255, 3.0, cv2.INPAINT_TELEA
    )
    methods.update({name: make_baseline(name).inpaint for name in STRONGER_BASELINES})
    scores = {}  # (method, kind) -> one dict of hole_errors per photo
    for index, path in enumerate(list_image_files(FLAGS.photos)):
        image = image_io.read_rgb(path)
        for kind, hole in fullsize_holes(*image.shape[:2], seed=index).items():
            for name, method in methods.items():
                errors = hole_errors(method(image, hole), image, hole)
                scores.setdefault((name, kind), []).append(errors)
    table = []
    for (name, kind), mine in scores.items():
        telea = scores[("telea", kind)]
        table.append(
            {
                "method": name,
                "hole": kind,
                "photos": len(mine),
                "hole_psnr": float(np.mean([r["hole_psnr"] for r in mine])),
                "hole_l1_percent": float(np.mean([r["hole_l1_percent"] for r in mine])),
                "wins_vs_telea": sum(
                    bool(r["hole_psnr"] > t["hole_psnr"]) for r, t in zip(mine, telea, strict=True)
                ),
            }
        )
    columns = ["method", "hole", "photos", "hole_psnr", "hole_l1_percent", "wins_vs_telea"]
    print(common.write_results("compact_fullsize", table, columns, FLAGS.out).read_text())


COMMANDS = {"curves": curves, "grid": grid, "fullsize": fullsize}
REQUIRED_FLAGS = {
    "curves": ("workdir", "snapshots", "heldout"),
    "grid": ("photos", "output"),
    "fullsize": ("photos",),
}


def main(argv: Sequence[str]) -> None:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: python -m benchmarks.compact_model {'|'.join(COMMANDS)} ...")
    missing = [f"--{name}" for name in REQUIRED_FLAGS[argv[1]] if not FLAGS[name].value]
    if missing:
        raise app.UsageError(f"{argv[1]} needs {', '.join(missing)}")
    COMMANDS[argv[1]]()


if __name__ == "__main__":
    app.run(main)
