"""Two parts of a one-photo `inpaint` side by side with what they replaced, in one run.

    python -m benchmarks.one_photo --photo PHOTO [--size 2560,1600] [--repeats 3]

- `png`: the photo resized to `--size`, written as an 8-bit PNG by `image_io.encode_image`
  (rows filtered "Up", then zlib) and by Pillow (every filter tried on every row) at zlib levels
  1 and 6, in turns: seconds (the fastest and slowest of `--repeats`) and bytes.
- `network`: the shipped DeepGIN-compact's first and second call at 128x128 in a new process
  whose compilation cache holds the program (as in a later `inpaint`), compiled for few calls
  (`GeneratorForward(few_calls=True)`) and by default, in turns: CPU seconds of each call.

Writes benchmarks/results/<device>/one_photo.{json,md} (--out).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks import common

HERE = Path(__file__).resolve().parent.parent

NETWORK_CALLS = """
import json, sys, time
import numpy as np
from deepgin_jax import compile_cache
from deepgin_jax.inference.network import GeneratorForward
compile_cache.enable(sys.argv[2])
forward = GeneratorForward.from_checkpoint(None, few_calls=sys.argv[1] == "few_calls")
masked = np.random.default_rng(0).random((1, 128, 128, 3), np.float32)
mask = np.zeros((1, 128, 128, 1), np.float32)
mask[:, 32:96, 32:96] = 1.0
seconds = []
for _ in range(2):
    start = time.process_time()
    np.asarray(forward(masked, mask))
    seconds.append(time.process_time() - start)
print(json.dumps(seconds))
"""


def _png_rows(photo: np.ndarray, repeats: int) -> list[dict]:
    from deepgin_jax import image_io

    def pillow(level: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(photo).save(buffer, "PNG", compress_level=level)
        return buffer.getvalue()

    writers = {
        "image_io (Up filter)": lambda level: image_io.encode_image(
            photo, "PNG", png_compression=level
        ),
        "Pillow": pillow,
    }
    rows = []
    for level in (1, 6):
        times: dict[str, list[float]] = {name: [] for name in writers}
        sizes = {}
        for _ in range(repeats):
            for name, write in writers.items():
                start = time.perf_counter()
                sizes[name] = len(write(level))
                times[name].append(time.perf_counter() - start)
        for name in writers:
            rows.append(
                {
                    "part": f"png, level {level}",
                    "variant": name,
                    "fastest_s": min(times[name]),
                    "slowest_s": max(times[name]),
                    "bytes": sizes[name],
                }
            )
    return rows


def _network_rows(repeats: int) -> list[dict]:
    variants = ("few_calls", "default")
    calls: dict[str, list[list[float]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="one-photo-") as cache:
        for round_ in range(repeats + 1):  # the first round fills the cache
            for name in variants:
                result = subprocess.run(
                    [sys.executable, "-c", NETWORK_CALLS, name, cache],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=HERE,
                )
                if round_:
                    calls[name].append(json.loads(result.stdout.strip().splitlines()[-1]))
    return [
        {
            "part": "network, 128x128",
            "variant": name,
            "first_call_cpu_s": [round(first, 3) for first, _ in calls[name]],
            "second_call_cpu_s": [round(second, 3) for _, second in calls[name]],
        }
        for name in variants
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", required=True)
    parser.add_argument("--size", default="2560,1600", help="Width,height of the PNG's photo.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", default="png,network")
    parser.add_argument("--out", default="benchmarks/results")
    flags = parser.parse_args()
    parts = flags.parts.split(",")
    rows = []
    if "png" in parts:
        width, height = (int(v) for v in flags.size.split(","))
        photo = Image.open(flags.photo).convert("RGB").resize((width, height), Image.LANCZOS)
        rows += _png_rows(np.asarray(photo), flags.repeats)
    if "network" in parts:
        rows += _network_rows(flags.repeats)
    columns = ["part", "variant", "fastest_s", "slowest_s", "bytes"]
    columns += ["first_call_cpu_s", "second_call_cpu_s"]
    print(common.write_results("one_photo", rows, columns, flags.out).read_text())


if __name__ == "__main__":
    main()
