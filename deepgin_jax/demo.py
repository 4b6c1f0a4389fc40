"""The `make demo` run: train a tiny DeepGIN on the bundled photos, then inpaint one of them.

    python -m deepgin_jax.demo --workdir demo_out [--config configs/demo.py]

Writes `WORKDIR/run/` (checkpoints, metrics.jsonl, sample grids), and `WORKDIR/mask.png`,
`WORKDIR/inpainted.png` and `WORKDIR/comparison.png` (masked input | DeepGIN | OpenCV Telea |
original). A second call resumes or reuses the finished run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from deepgin_jax import image_io, masks, metric_writers, metrics, train_lib
from deepgin_jax.baselines import OpenCVInpainter
from deepgin_jax.data import SAMPLES_DIR
from deepgin_jax.inference import Inpainter

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config",
    str(Path(__file__).resolve().parent.parent / "configs" / "demo.py"),
    "Training config.",
    lock_config=True,
)
flags.DEFINE_string("workdir", "demo_out", "Where the run and the pictures go.")
flags.DEFINE_string("photo", "chelsea.jpg", "Which bundled photo to inpaint.")


def demo_mask(height: int, width: int, seed: int = 7) -> np.ndarray:
    """A rectangle and free-form strokes: bool [H, W], True = hole."""
    rng = np.random.default_rng(seed)
    hole = masks.rectangular_mask(rng, height, width) > 0
    strokes = masks.free_form_mask(rng, height, width, num_strokes=4) > 0
    return hole | strokes


def run_demo(config, workdir: Path, photo: str) -> dict[str, float]:
    """Trains (or resumes) and inpaints `photo`; returns PSNR of both methods inside the hole."""
    run_dir = workdir / "run"
    train_lib.train_and_evaluate(config, str(run_dir))

    image = image_io.read_rgb(SAMPLES_DIR / photo)
    hole = demo_mask(*image.shape[:2])
    image_io.save_mask(workdir / "mask.png", hole)
    deepgin = Inpainter(run_dir).inpaint(image, hole)
    telea = OpenCVInpainter("telea").inpaint(image, hole)
    image_io.save_image(workdir / "inpainted.png", deepgin)
    masked = np.where(hole[..., None], 255, image).astype(np.uint8)
    image_io.save_image(
        workdir / "comparison.png", np.concatenate([masked, deepgin, telea, image], axis=1)
    )

    def hole_psnr(result: np.ndarray) -> float:
        error = (result[hole].astype(np.float64) - image[hole]) / 255.0
        return float(10 * np.log10(1.0 / np.mean(error**2)))

    scores = {"deepgin_hole_psnr": hole_psnr(deepgin), "telea_hole_psnr": hole_psnr(telea)}
    scores["deepgin_ssim"] = float(metrics.ssim(deepgin[None], image[None])[0])
    scores["telea_ssim"] = float(metrics.ssim(telea[None], image[None])[0])
    return scores


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    metric_writers.quiet_library_logging()
    workdir = Path(FLAGS.workdir)
    scores = run_demo(FLAGS.config, workdir, FLAGS.photo)
    logging.info("demo scores: %s", scores)
    print(f"\nTrained run: {workdir / 'run'} (metrics.jsonl, samples/, checkpoints/)")
    print(f"Inpainted:   {workdir / 'inpainted.png'}")
    print(f"Comparison:  {workdir / 'comparison.png'}  (masked | DeepGIN | Telea | original)")
    print("Inside the hole: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))


if __name__ == "__main__":
    app.run(main)
