"""How long an `inpaint` command takes from start to written file: the first process ever (an
empty compilation cache) and the processes after it (the cache filled).

    python -m benchmarks.startup --photo PHOTO [--against OLD_CHECKOUT] [--repeats 2]

The photo is resized to `--size` (2560x1600 by default) and given an object-sized hole: an
ellipse of `--hole` pixels (500x400) at its centre. Each checkout (this one, and --against's in
turns with it, so that both see the same load) runs `python -m deepgin_jax.inpaint` once with a
fresh cache folder (`--xla_cache`), then `--repeats` times more with that folder; per process it
prints the wall seconds and the CPU seconds (user + system) of the process, with the load
average before each.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks import common

HERE = Path(__file__).resolve().parent.parent


def _inputs(photo: str, size: tuple[int, int], hole: tuple[int, int], folder: Path):
    width, height = size
    image = Image.open(photo).convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    image.save(folder / "photo.png")
    rows, cols = np.ogrid[:height, :width]
    ellipse = ((cols - width / 2) / (hole[0] / 2)) ** 2 + ((rows - height / 2) / (hole[1] / 2)) ** 2
    Image.fromarray(np.where(ellipse <= 1, 255, 0).astype(np.uint8)).save(folder / "mask.png")
    return folder / "photo.png", folder / "mask.png"


def _run(checkout: Path, image: Path, mask: Path, output: Path, cache: Path) -> dict[str, float]:
    """One `inpaint` process of `checkout`: its wall and CPU seconds."""
    environment = dict(os.environ, PYTHONPATH=str(checkout))
    command = [
        sys.executable,
        "-m",
        "deepgin_jax.inpaint",
        f"--image={image}",
        f"--mask={mask}",
        f"--output={output}",
        "--overwrite",
        f"--xla_cache={cache}",
    ]
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, env=environment, check=True, capture_output=True, cwd=checkout)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "load": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo", required=True, help="The photo to inpaint.")
    parser.add_argument("--size", default="2560,1600", help="Width,height it is resized to.")
    parser.add_argument("--hole", default="500,400", help="The ellipse's width,height.")
    parser.add_argument("--repeats", type=int, default=2, help="Processes after the first.")
    parser.add_argument("--against", default=None, help="Another checkout, measured in turns.")
    parser.add_argument("--out", default="benchmarks/results", help="Where to write the table.")
    flags = parser.parse_args()
    checkouts = {"this": HERE}
    if flags.against:
        checkouts = {"before": Path(flags.against).resolve(), "this": HERE}
    size = tuple(int(v) for v in flags.size.split(","))
    hole = tuple(int(v) for v in flags.hole.split(","))
    rows = []
    with tempfile.TemporaryDirectory(prefix="startup-") as scratch:
        folder = Path(scratch)
        image, mask = _inputs(flags.photo, size, hole, folder)
        cases = ["first ever"] + [f"later {k}" for k in range(1, flags.repeats + 1)]
        outputs = {}
        for case in cases:
            for name, checkout in checkouts.items():
                output = folder / f"{name}.png"
                timing = _run(checkout, image, mask, output, folder / f"cache-{name}")
                rows.append({"checkout": name, "process": case, **timing})
                print(rows[-1], flush=True)
                outputs[name] = np.asarray(Image.open(output))
        if len(outputs) == 2:
            differ = np.abs(outputs["this"].astype(int) - outputs["before"]).max()
            print(f"largest pixel difference between the checkouts' outputs: {differ}")
    columns = ["checkout", "process", "wall_s", "cpu_s", "load"]
    print(common.write_results("startup", rows, columns, flags.out).read_text())


if __name__ == "__main__":
    main()
