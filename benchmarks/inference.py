"""Inference latency through `Inpainter` (pad or polyphase tiles; the whole photo or a crop).

    python benchmarks/inference.py                                   # CPU: 256 and 512 only
    python benchmarks/inference.py --width=16 --sizes=256x256,2560x1600 --strategies=auto,whole
    python benchmarks/inference.py --checkpoint=shipped --sizes=256x256,2560x1600
    python benchmarks/inference.py --sizes=256x256,512x512,1024x1024,2560x1600 \
        --dtypes=float32,bfloat16 --max_batch=70                     # a GPU

The model: random weights of a DeepGIN of base width --width (speed does not depend on the
weights; 64 is the paper's, 16 the shipped DeepGIN-compact's), or --checkpoint: a generator
checkpoint, a shipped-model folder, or "shipped" for the model shipped with the package. The
hole: a centred rectangle of the photo's aspect covering --hole_fraction of it (0.05: an
object). --strategies: how much of the photo the network sees (`Inpainter` strategy: auto,
crop, whole). A shipped model runs with its card's upscale and blend (`--blend` overrides the
latter). Writes benchmarks/results/inference.{json,md} (--out, --name).
"""

from __future__ import annotations

import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import common
from deepgin_jax import shipped
from deepgin_jax.inference import BLENDS, STRATEGIES, Inpainter, default_max_batch
from deepgin_jax.models import DeepGIN

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["256x256", "512x512"], "WIDTHxHEIGHT of the images.")
flags.DEFINE_list("dtypes", ["float32"], "Compute dtypes (float32, bfloat16).")
flags.DEFINE_integer("width", 64, "base_features of the random generator (64 = the paper's).")
flags.DEFINE_string(
    "checkpoint", None, "A generator checkpoint or shipped folder, or 'shipped'; default: random."
)
flags.DEFINE_list("strategies", ["auto"], f"Inpainter strategies ({', '.join(STRATEGIES)}).")
flags.DEFINE_float("hole_fraction", 0.05, "Hole area as a fraction of the photo.")
flags.DEFINE_enum(
    "blend", None, list(BLENDS), "Inpainter blend; default: the model's (its card's, or paste)."
)
flags.DEFINE_string("name", "inference", "Results file name (without extension).")
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


def test_image(
    width: int, height: int, hole_fraction: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 [H, W, 3] and a centred hole of the photo's aspect, `hole_fraction` of it."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), bool)
    scale = np.sqrt(hole_fraction)
    hole_h, hole_w = max(1, round(height * scale)), max(1, round(width * scale))
    top, left = (height - hole_h) // 2, (width - hole_w) // 2
    mask[top : top + hole_h, left : left + hole_w] = True
    return image, mask


def load_model() -> tuple[DeepGIN, dict, str, dict]:
    """(model, variables, description, the Inpainter settings its card recommends) from
    --checkpoint, or a random one of --width (with the plain settings)."""
    if FLAGS.checkpoint:
        path = None if FLAGS.checkpoint == "shipped" else FLAGS.checkpoint
        model, variables = shipped.load_generator(path)
        return model, variables, FLAGS.checkpoint, shipped.recommended_inference(path)
    model = DeepGIN(base_features=FLAGS.width)
    description = f"random, width {FLAGS.width}"
    return model, random_generator_variables(model), description, {}


def main(argv: list[str]) -> None:
    del argv
    model, variables, description, settings = load_model()
    if FLAGS.blend:
        settings["blend"] = FLAGS.blend
    rows = []
    for dtype_name, strategy in itertools.product(FLAGS.dtypes, FLAGS.strategies):
        inpainter = Inpainter.from_model(
            model,
            variables,
            dtype=DTYPES[dtype_name],
            strategy=strategy,
            max_batch=FLAGS.max_batch or default_max_batch(),
            **settings,
        )
        for size in FLAGS.sizes:
            width, height = map(int, size.split("x"))
            image, mask = test_image(width, height, FLAGS.hole_fraction)
            inpainter.batch_shapes.clear()
            box = inpainter.crop_box(mask)
            network_input = "whole" if box is None else f"{box[3] - box[1]}x{box[2] - box[0]}"
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
                    "model": description,
                    "dtype": dtype_name,
                    "strategy": strategy,
                    "upscale": inpainter.upscale,
                    "blend": inpainter.blend,
                    "size": size,
                    "hole_percent": round(100 * float(mask.mean()), 2),
                    "network_input": network_input,
                    "megapixels": width * height / 1e6,
                    "first_call_s": first_call,
                    "latency_ms": timing["median_s"] * 1e3,
                    "min_ms": timing["min_s"] * 1e3,
                    "ms_per_megapixel": timing["median_s"] * 1e3 / (width * height / 1e6),
                    "network_batches": sorted(inpainter.batch_shapes),
                    **common.peak_memory_bytes(),
                }
            )
            print(rows[-1], flush=True)
    columns = [
        "model",
        "dtype",
        "strategy",
        "upscale",
        "blend",
        "size",
        "hole_percent",
        "network_input",
        "megapixels",
        "latency_ms",
        "min_ms",
        "ms_per_megapixel",
        "first_call_s",
        "device_peak_bytes",
    ]
    print(common.write_results(FLAGS.name, rows, columns, FLAGS.out).read_text())


if __name__ == "__main__":
    app.run(main)
