"""The Poisson blend's solve, exact (SuperLU) against two levels (`blending.hole_system`),
side by side on the same holes: CPU seconds to factorise and to solve the blend and the
membrane (6 right-hand sides), and how far the two-level solution is from the exact one.

    python -m benchmarks.poisson_solve [--photo PHOTO] [--size 2560,1600] [--holes 3.9,6.2]

The photo (default: a seeded gradient with texture) is resized to `--size`; each hole is a
centred ellipse of aspect 5:4 covering `--holes` percent of it; the fill is the photo, 0.1
brighter, with noise (an offset for the blend to remove). Largest difference over the hole's
pixels in 0-255 levels.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
from PIL import Image

from benchmarks import common
from deepgin_jax import blending, cli

COLUMNS = ["hole_percent", "pixels", "solver", "factor_cpu_s", "solve_cpu_s", "max_difference"]


def _photo(path: str | None, width: int, height: int) -> np.ndarray:
    if path:
        image = Image.open(path).convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
        return np.asarray(image, np.float32) / 255.0
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:height, :width] / max(height, width)
    ramp = np.stack([0.3 + 0.4 * cols, 0.5 - 0.3 * rows, 0.4 + 0.2 * rows * cols], axis=-1)
    return np.clip(ramp + 0.05 * rng.standard_normal(ramp.shape), 0.0, 1.0).astype(np.float32)


def _ellipse(height: int, width: int, percent: float) -> np.ndarray:
    """A centred ellipse, width:height 5:4, of `percent` of the image."""
    semi_y = np.sqrt(percent / 100.0 * height * width / (np.pi * 1.25))
    hole = np.zeros((height, width), np.uint8)
    axes = (round(1.25 * semi_y), round(semi_y))
    cv2.ellipse(hole, (width // 2, height // 2), axes, 0, 0, 360, 1, -1)
    return hole.astype(bool)


def measure(photo: np.ndarray, percent: float) -> list[dict]:
    """Both solvers' rows for one hole."""
    hole = _ellipse(*photo.shape[:2], percent)
    rng = np.random.default_rng(1)
    fill = np.clip(photo + 0.1 + 0.02 * rng.standard_normal(photo.shape), 0.0, 1.0)
    problems = [(photo, fill), (photo, np.zeros_like(fill))]
    rows, solutions = [], {}
    for name, two_level in (("exact", False), ("two-level", True)):
        start = time.process_time()
        system = blending.hole_system(hole, two_level=two_level)
        factored = time.process_time()
        solutions[name] = system.solve(problems)
        solved = time.process_time()
        rows.append(
            {"hole_percent": percent, "pixels": int(hole.sum()), "solver": name,
             "factor_cpu_s": factored - start, "solve_cpu_s": solved - factored}
        )  # fmt: skip
    difference = max(
        float(np.abs(a - b).max())
        for a, b in zip(solutions["exact"], solutions["two-level"], strict=True)
    )
    rows[0]["max_difference"] = 0.0
    rows[1]["max_difference"] = 255.0 * difference
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo", default=None, help="A photo (default: a synthetic one).")
    parser.add_argument("--size", default="2560,1600", help="Width,height it is resized to.")
    parser.add_argument("--holes", default="3.9,6.2", help="Hole sizes, percent of the photo.")
    parser.add_argument("--out", default="benchmarks/results", help="Where to write the table.")
    flags = parser.parse_args()
    cli.one_blas_thread()  # as `inpaint` and the editor run
    width, height = (int(v) for v in flags.size.split(","))
    photo = _photo(flags.photo, width, height)
    rows = [row for percent in flags.holes.split(",") for row in measure(photo, float(percent))]
    print(common.write_results("poisson_solve", rows, COLUMNS, flags.out).read_text())


if __name__ == "__main__":
    main()
