"""The `make demo` run: inpaint the bundled photos with the shipped model, then train briefly.

    python -m deepgin_jax.demo --workdir demo_out [--config configs/demo.py]

1. Inpaints each bundled photo (`deepgin_jax/data/samples`) with a box and a few brush strokes
   using the model shipped with the package (DeepGIN-compact, `deepgin_jax.shipped`) and OpenCV
   Telea, and writes `WORKDIR/comparison.png` (one row per photo: masked input | DeepGIN |
   Telea | original) with the PSNR inside the holes of both.
2. Trains the tiny config (`configs/demo.py`: both stages, a few dozen steps) into
   `WORKDIR/run/` (checkpoints, metrics.jsonl, sample grids) to show that training runs; a second
   call resumes or reuses the finished run.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from deepgin_jax import cli, image_io, masks, metric_writers, train_lib
from deepgin_jax.data import sample_image_paths
from deepgin_jax.inference import Inpainter

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config",
    str(Path(__file__).resolve().parent.parent / "configs" / "demo.py"),
    "Training config.",
    lock_config=True,
)
flags.DEFINE_string("workdir", "demo_out", "Where the run and the pictures go.")
flags.DEFINE_integer("row_height", 200, "Height of each row of the comparison picture.")


def demo_mask(height: int, width: int, seed: int = 7) -> np.ndarray:
    """A box of 0.2-0.35 of the sides and three brush strokes: bool [H, W], True = hole."""
    rng = np.random.default_rng(seed)
    box_h = int(rng.uniform(0.2, 0.35) * height)
    box_w = int(rng.uniform(0.2, 0.35) * width)
    top = int(rng.integers(height // 8, height - box_h - height // 8))
    left = int(rng.integers(width // 8, width - box_w - width // 8))
    hole = np.zeros((height, width), bool)
    hole[top : top + box_h, left : left + box_w] = True
    strokes = masks.free_form_mask(rng, height, width, num_strokes=3, scale_strokes=True) > 0
    return hole | strokes


def hole_psnr(result: np.ndarray, image: np.ndarray, hole: np.ndarray) -> float:
    """PSNR in dB over the hole's pixels of uint8 images."""
    error = (result[hole].astype(np.float64) - image[hole]) / 255.0
    return float(10 * np.log10(1.0 / max(np.mean(error**2), 1e-10)))


def _row(panels: list[np.ndarray], height: int) -> np.ndarray:
    width = round(panels[0].shape[1] * height / panels[0].shape[0])
    resized = [cv2.resize(p, (width, height), interpolation=cv2.INTER_AREA) for p in panels]
    gap = np.full((height, 4, 3), 255, np.uint8)
    return np.concatenate([x for p in resized for x in (p, gap)][:-1], axis=1)


def inpaint_samples(workdir: Path, row_height: int) -> dict[str, float]:
    """Inpaints every bundled photo with the shipped model and Telea; writes the comparison
    and returns the mean hole PSNR of both."""
    inpainter = Inpainter()
    rows, scores = [], {"deepgin_hole_psnr": [], "telea_hole_psnr": []}
    for index, path in enumerate(sample_image_paths()):
        image = image_io.read_rgb(path)
        hole = demo_mask(*image.shape[:2], seed=index)
        ours = inpainter.inpaint(image, hole)
        telea = cv2.inpaint(image, hole.astype(np.uint8) * 255, 3.0, cv2.INPAINT_TELEA)
        masked = np.where(hole[..., None], 255, image).astype(np.uint8)
        rows.append(_row([masked, ours, telea, image], row_height))
        scores["deepgin_hole_psnr"].append(hole_psnr(ours, image, hole))
        scores["telea_hole_psnr"].append(hole_psnr(telea, image, hole))
        logging.info(
            "%s: hole PSNR DeepGIN %.2f dB, Telea %.2f dB",
            path.name,
            scores["deepgin_hole_psnr"][-1],
            scores["telea_hole_psnr"][-1],
        )
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    image_io.save_image(workdir / "comparison.png", np.concatenate(rows, axis=0))
    return {name: float(np.mean(values)) for name, values in scores.items()}


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    metric_writers.quiet_library_logging()
    workdir = Path(FLAGS.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    scores = inpaint_samples(workdir, FLAGS.row_height)
    train_lib.train_and_evaluate(FLAGS.config, str(workdir / "run"))
    print(f"\nComparison:  {workdir / 'comparison.png'}  (masked | DeepGIN | Telea | original)")
    print("Mean PSNR inside the holes: " + ", ".join(f"{k} {v:.2f} dB" for k, v in scores.items()))
    print(f"Trained run: {workdir / 'run'} (metrics.jsonl, samples/, checkpoints/)")


if __name__ == "__main__":
    cli.run(main)
