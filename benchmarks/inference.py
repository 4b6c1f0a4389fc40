"""Inference latency of the full-size DeepGIN through `Inpainter` (pad or polyphase tiles).

    python benchmarks/inference.py                                   # CPU: 256 and 512 only
    python benchmarks/inference.py --sizes=256x256,512x512,1024x1024,2560x1600 \
        --dtypes=float32,bfloat16 --max_batch=70                     # a GPU

Weights are random (speed does not depend on them). Writes benchmarks/results/inference.{json,md}.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import common
from deepgin_jax.inference import Inpainter, default_max_batch
from deepgin_jax.models import DeepGIN

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["256x256", "512x512"], "WIDTHxHEIGHT of the images.")
flags.DEFINE_list("dtypes", ["float32"], "Compute dtypes (float32, bfloat16).")
flags.DEFINE_integer("width", 64, "base_features of the generator (64 = the paper's).")
flags.DEFINE_integer(
    "max_batch", 0, "Most sub-images per network call (0: the backend's default, 4 on a CPU)."
)
flags.DEFINE_integer("repeats", 5, "Timed calls per size.")
flags.DEFINE_string("out", "benchmarks/results", "Where to write the results.")

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def random_generator_variables(model: DeepGIN, seed: int = 0) -> dict:
    """Order-one random weights (N(0, 1/fan_in)), drawn on the host: no init compile."""
    image = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, 64, 64, 1), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), image, mask)
    rng = np.random.default_rng(seed)

    def draw(leaf: jax.ShapeDtypeStruct) -> np.ndarray:
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
        scale = 1.0 / np.sqrt(fan_in) if len(leaf.shape) > 1 else 0.01
        return (rng.standard_normal(leaf.shape) * scale).astype(np.float32)

    return jax.tree.map(draw, shapes)


def test_image(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), bool)
    mask[height // 4 : height // 2, width // 3 : 2 * width // 3] = True
    return image, mask


def main(argv: list[str]) -> None:
    del argv
    model = DeepGIN(base_features=FLAGS.width)
    variables = random_generator_variables(model)
    rows = []
    for dtype_name in FLAGS.dtypes:
        inpainter = Inpainter.from_model(
            model,
            variables,
            dtype=DTYPES[dtype_name],
            max_batch=FLAGS.max_batch or default_max_batch(),
        )
        for size in FLAGS.sizes:
            width, height = map(int, size.split("x"))
            image, mask = test_image(width, height)
            start = time.perf_counter()
            inpainter.inpaint(image, mask)
            first_call = time.perf_counter() - start
            timing = common.time_calls(
                lambda f=inpainter.inpaint, image=image, mask=mask: f(image, mask),
                warmup=0,
                repeats=FLAGS.repeats,
            )
            rows.append(
                {
                    "dtype": dtype_name,
                    "size": size,
                    "megapixels": width * height / 1e6,
                    "first_call_s": first_call,
                    "latency_ms": timing["median_s"] * 1e3,
                    "min_ms": timing["min_s"] * 1e3,
                    "ms_per_megapixel": timing["median_s"] * 1e3 / (width * height / 1e6),
                    "network_batches": sorted(inpainter.batch_shapes),
                }
            )
            print(rows[-1], flush=True)
    columns = [
        "dtype",
        "size",
        "megapixels",
        "latency_ms",
        "min_ms",
        "ms_per_megapixel",
        "first_call_s",
    ]
    print(common.write_results("inference", rows, columns, FLAGS.out).read_text())


if __name__ == "__main__":
    app.run(main)
