"""Does the generator learn from its initialisation? Two measurements, per `model.init_scheme`.

    # the share of kernel gradients below Adam's eps at step 0 (one real backward pass)
    python -m benchmarks.initialisation gradients --photos=PHOTOS/train --size=256 --base=64 \
        --batch_images=4
    # learning curves: warm-up training, hole PSNR and hole std on held-out crops every N steps
    python -m benchmarks.initialisation curve --photos=PHOTOS/train --heldout=PHOTOS/eval \
        --workdir=/tmp/curves --steps=1500 --every=250

A batch is `batch_images` photos with three masks each (box, cellular automata, free-form
strokes scaled to the size), so `--batch_images=4` is the paper's batch of 12. Results go to
`benchmarks/results/<device>/initialisation_*.json` (`curve` also writes a PNG plot).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import common
from benchmarks.heldout import baseline_scores, hole_scores, masked_crops
from deepgin_jax import config as config_lib
from deepgin_jax import losses, train_lib
from deepgin_jax.checkpointing import load_generator
from deepgin_jax.data.sources import list_image_files
from deepgin_jax.models.generator import INIT_SCHEMES
from deepgin_jax.train_state import build_setup, init_train_state
from deepgin_jax.train_steps import prepare_batch

FLAGS = flags.FLAGS
flags.DEFINE_string("photos", None, "Folder of training photos.", required=True)
flags.DEFINE_string("heldout", None, "Folder of held-out photos (curve).")
flags.DEFINE_string("workdir", "/tmp/initialisation_curves", "Training workdirs (curve).")
flags.DEFINE_list("schemes", list(INIT_SCHEMES), "Initialisation schemes to compare.")
flags.DEFINE_integer("size", 64, "Crop size.")
flags.DEFINE_integer("base", 16, "Generator base width.")
flags.DEFINE_integer("batch_images", 2, "Photos per batch (three masks each).")
flags.DEFINE_integer("steps", 1500, "Warm-up steps (curve).")
flags.DEFINE_integer("every", 250, "Evaluate every this many steps (curve).")
flags.DEFINE_float("lr", 1e-4, "Generator learning rate (curve).")
flags.DEFINE_integer("heldout_images", 32, "Held-out photos, three masks each (curve).")
flags.DEFINE_bool("remat", True, "Rematerialise the residual blocks (gradients: less memory).")

RESULTS = str(Path(__file__).resolve().parent / "results")
ADAM_EPS = 1e-8


def config_for(scheme: str) -> config_lib.ml_collections.ConfigDict:
    config = config_lib.default_config()
    config.model.base_features = FLAGS.base
    config.model.init_scheme = scheme
    config.model.remat = FLAGS.remat
    config.discriminator.features = 8
    config.data.folder = FLAGS.photos
    config.data.augmentation = "crops"
    config.data.crop_size = FLAGS.size
    config.data.scale_strokes = True
    config.data.items_per_batch = FLAGS.batch_images
    config.loss.perceptual_weight = 0.0
    config.loss.style_weight = 0.0
    config.optim.g_lr = FLAGS.lr
    config.warmup_steps = FLAGS.steps
    config.gan_steps = 0
    config.log_every_steps = 50
    config.sample_every_steps = 0
    config.checkpoint_every_steps = FLAGS.every
    config.keep_checkpoints = FLAGS.steps // FLAGS.every + 1
    return config


def gradient_shares(scheme: str, batch: dict[str, np.ndarray]) -> dict[str, float]:
    """Share of kernel-gradient entries below Adam's eps in G1 and G2 for the warm-up loss at
    step 0, and the L1 loss itself."""
    setup = build_setup(config_for(scheme))
    size = batch["image"].shape[1]
    state = jax.jit(functools.partial(init_train_state, setup, crop_size=size))(jax.random.key(0))
    target, mask, masked = prepare_batch(jax.tree.map(jnp.asarray, batch))

    def loss_fn(params):
        outputs = setup.generator.apply({"params": params}, masked, mask, target)
        loss, _ = losses.generator_loss(outputs, target, mask, None, None, setup.warmup_loss_config)
        return loss

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(state.g_params)
    row = {"scheme": scheme, "warmup_loss": float(loss)}
    for stage in ("coarse", "refine"):
        kernels = [
            np.abs(np.asarray(leaf)).ravel()
            for path, leaf in jax.tree_util.tree_leaves_with_path(grads[stage])
            if path[-1].key == "kernel"
        ]
        flat = np.concatenate(kernels)
        row[f"{stage}_below_eps"] = float(np.mean(flat < ADAM_EPS))
        row[f"{stage}_median_abs_grad"] = float(np.median(flat))
    return row


def learning_curve(scheme: str, heldout: dict[str, np.ndarray]) -> list[dict[str, float]]:
    workdir = Path(FLAGS.workdir) / scheme
    train_lib.train_and_evaluate(config_for(scheme), str(workdir))
    batch = jax.tree.map(jnp.asarray, heldout)
    rows = []
    for step_dir in sorted((workdir / "checkpoints").iterdir(), key=lambda p: int(p.name)):
        model, variables = load_generator(step_dir)
        target, mask, masked = prepare_batch(batch)
        completed = jax.jit(model.apply)(variables, masked, mask, target).completed
        scores = hole_scores(np.clip(np.asarray(completed), 0, 1), heldout)
        rows.append({"scheme": scheme, "step": int(step_dir.name), **scores})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def plot_curves(rows: list[dict], baselines: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for scheme in dict.fromkeys(r["scheme"] for r in rows if "step" in r):
        steps = [r["step"] for r in rows if r["scheme"] == scheme]
        left.plot(
            steps, [r["hole_psnr"] for r in rows if r["scheme"] == scheme], "o-", label=scheme
        )
        right.plot(
            steps, [r["hole_std"] for r in rows if r["scheme"] == scheme], "o-", label=scheme
        )
    for name, style in (("telea", "--"), ("mean_colour", ":")):
        left.axhline(baselines[name]["hole_psnr"], color="grey", linestyle=style, label=name)
    right.axhline(baselines["target"]["hole_std"], color="grey", linestyle="--", label="photos")
    left.set(xlabel="warm-up step", ylabel="hole PSNR (dB), held-out crops")
    right.set(xlabel="warm-up step", ylabel="std inside the hole")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: Sequence[str]) -> None:
    if len(argv) != 2 or argv[1] not in ("gradients", "curve"):
        raise app.UsageError("usage: python -m benchmarks.initialisation gradients|curve ...")
    photos = list_image_files(FLAGS.photos)
    tag = f"base{FLAGS.base}_{FLAGS.size}px_batch{3 * FLAGS.batch_images}"
    if argv[1] == "gradients":
        batch = masked_crops(photos[: FLAGS.batch_images], FLAGS.size, seed=0)
        rows = [gradient_shares(scheme, batch) for scheme in FLAGS.schemes]
        for row in rows:
            print(json.dumps(row), flush=True)
        columns = list(rows[0])
        common.write_results(f"initialisation_gradients_{tag}", rows, columns, RESULTS)
        return
    heldout_photos = list_image_files(FLAGS.heldout)[: FLAGS.heldout_images]
    heldout = masked_crops(heldout_photos, FLAGS.size, seed=1)
    baselines = baseline_scores(heldout)
    print(json.dumps(baselines), flush=True)
    rows = [row for scheme in FLAGS.schemes for row in learning_curve(scheme, heldout)]
    for name, scores in baselines.items():
        rows.append({"scheme": name, **scores})
    name = f"initialisation_curve_{tag}"
    table = common.write_results(name, rows, list(rows[0]), RESULTS)
    plot_curves(rows, baselines, table.with_suffix(".png"))


if __name__ == "__main__":
    app.run(main)
