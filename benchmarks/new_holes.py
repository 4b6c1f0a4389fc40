"""How long a new hole takes once the inpainter is warm: the editor's case.

    python -m benchmarks.new_holes --photo PHOTO --holes 4 --strategies scaled,polyphase \
        [--against OLD_CHECKOUT]

The photo is resized to `--size` (2560x1600 by default). Each strategy gets its own
`Inpainter` (the shipped model, `max_batch` 4 as the editor builds it), `warm_up()`, then
`--holes` seeded object holes (ellipses and boxes of 3-8 % of the photo) that it has never
seen, then `--strokes` seeded sets of brush strokes scaled to the photo; per hole it prints
the wall and CPU seconds and how many executables were compiled
(`inference.forward_cache_size()`; 0 is the goal). `--parallel_calls=1,2` builds an
`Inpainter` for each number of network calls at once (0: the default, one per core) and runs
every hole with each, in turns. With `--against`, the same run (the holes and `--strokes`,
the default calls) is made by that checkout and then by this one, each in its own process,
into one table whose `checkout` column says which ("before", "this"); `--strokes` needs a
checkout that has the option.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import app, flags
from PIL import Image

from benchmarks import common
from deepgin_jax import cli, compile_cache, masks
from deepgin_jax.inference import Inpainter, forward_cache_size

FLAGS = flags.FLAGS
flags.DEFINE_string("photo", None, "The photo to inpaint.", required=True)
flags.DEFINE_list("size", ["2560", "1600"], "Width, height it is resized to.")
flags.DEFINE_integer("holes", 4, "New holes per strategy.")
flags.DEFINE_integer("strokes", 0, "New sets of brush strokes per strategy, after the holes.")
flags.DEFINE_list("parallel_calls", ["0"], "Inpainters' parallel_calls, in turns (0: default).")
flags.DEFINE_list("strategies", ["scaled", "polyphase"], "Inpainter strategies, side by side.")
flags.DEFINE_string("out", "benchmarks/results", "Where to write the table.")
flags.DEFINE_string("against", None, "Another checkout, run in turns with this one.")

HERE = Path(__file__).resolve().parent.parent
COLUMNS = ["strategy", "parallel_calls", "case", "hole_percent", "wall_s", "cpu_s", "compiled"]


def _timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _rows_of(checkout: Path, folder: Path) -> list[dict]:
    """This benchmark's rows, run by `checkout`'s code in a process of its own."""
    command = [
        sys.executable, "-m", "benchmarks.new_holes", f"--photo={Path(FLAGS.photo).resolve()}",
        f"--size={','.join(FLAGS.size)}", f"--holes={FLAGS.holes}",
        f"--strategies={','.join(FLAGS.strategies)}", f"--out={folder}",
    ]  # fmt: skip
    if FLAGS.strokes:
        command.append(f"--strokes={FLAGS.strokes}")
    environment = dict(os.environ, PYTHONPATH=str(checkout))
    subprocess.run(command, env=environment, check=True, capture_output=True, cwd=checkout)
    (table,) = folder.glob("*/new_holes.json")
    return json.loads(table.read_text())["rows"]


def main(argv: Sequence[str]) -> None:
    del argv
    if FLAGS.against:
        checkouts = {"before": Path(FLAGS.against).resolve(), "this": HERE}
        rows = []
        with tempfile.TemporaryDirectory() as folder:
            for label, checkout in checkouts.items():
                rows += [
                    {"checkout": label, **row} for row in _rows_of(checkout, Path(folder) / label)
                ]
        table = common.write_results("new_holes", rows, ["checkout", *COLUMNS], FLAGS.out)
        print(table.read_text())
        return
    compile_cache.enable()
    cli.one_blas_thread()  # as the editor does
    cli.no_huge_page_advice()
    cli.reuse_freed_memory()
    width, height = (int(v) for v in FLAGS.size)
    photo = np.asarray(Image.open(FLAGS.photo).convert("RGB").resize((width, height)))
    holes = []
    for index in range(FLAGS.holes):
        shape = masks.OBJECT_SHAPES[index % len(masks.OBJECT_SHAPES)]
        hole = masks.object_mask(masks.mask_rng(index, 0), height, width, shape)
        holes.append((f"hole {index} ({shape})", hole > 0.5))
    for index in range(FLAGS.strokes):
        strokes = masks.free_form_mask(masks.mask_rng(index, 1), height, width, scale_strokes=True)
        holes.append((f"strokes {index}", strokes > 0.5))
    rows = []
    for strategy in FLAGS.strategies:
        inpainters = {}
        for calls in (int(value) for value in FLAGS.parallel_calls):
            inpainter = Inpainter(strategy=strategy, max_batch=4, parallel_calls=calls or None)
            inpainters[inpainter.parallel_calls] = inpainter
            before = forward_cache_size()
            wall, cpu = _timed(inpainter.warm_up)
            rows.append(
                {"strategy": strategy, "parallel_calls": inpainter.parallel_calls,
                 "case": "warm_up", "hole_percent": None, "wall_s": wall, "cpu_s": cpu,
                 "compiled": forward_cache_size() - before}
            )  # fmt: skip
        for case, hole in holes:
            for calls, inpainter in inpainters.items():
                before = forward_cache_size()
                wall, cpu = _timed(functools.partial(inpainter.inpaint, photo, hole))
                rows.append(
                    {"strategy": strategy, "parallel_calls": calls, "case": case,
                     "hole_percent": 100 * float(hole.mean()), "wall_s": wall, "cpu_s": cpu,
                     "compiled": forward_cache_size() - before}
                )  # fmt: skip
    print(common.write_results("new_holes", rows, COLUMNS, FLAGS.out).read_text())


if __name__ == "__main__":
    app.run(main)
