"""Training-step throughput of the full-size DeepGIN (GAN stage: G, D and VGG-19 losses).

    python -m benchmarks.train_step --batches=1 --repeats=2                 # CPU
    python -m benchmarks.train_step --batches=1,12,48 --dtypes=float32,bfloat16   # a GPU
    XLA_FLAGS=--xla_force_host_platform_device_count=4 \
        python -m benchmarks.train_step --width=16 --size=64 --devices=1,2,4   # scaling
    python -m benchmarks.train_step --config=configs/compact.py --batches=6 --stage=warmup

Without --config the step is `config.default_config()`'s (the paper's) at generator width
--width. --config measures a training config's step instead (configs/*.py[:variant], loaded as
`deepgin_jax.train` loads it; `--config.x=y` overrides work): its generator and discriminator
widths, losses (e.g. loss.vgg_image_size) and optimizers. --width and --size, when given,
override the config's model.base_features and data.crop_size; otherwise both come from the
config. --batches stays the number of samples per step (DeepGIN-compact: 2 images x 3 masks =
6). Either way the step is bound as training binds it: the generator's gradient clipped to the
config's optim.g_clip_norm (3.0 by default) in both stages.

Reports compile time, step time, images/s, the step's FLOPs from XLA's cost analysis, MFU
against the device's dense peak (or --peak_tflops; float32 against the TF32 rate on NVIDIA
GPUs), XLA's planned memory of the compiled step and the device's peak memory.
--attention_impl picks the generator's attention (xla, cudnn, chunked). --estimate_only
compiles without running (no device memory is used): FLOPs and planned memory per batch, e.g.
on a CPU to choose the batches a GPU can hold. The FLOPs are counted on the step with
XLA's attention, since the cost analysis counts a loop's body once and the chunked attention
(a CPU's choice) is a loop over blocks of queries; both compute the same. Weights are random:
speed does not depend on them. Writes benchmarks/results/<device>/<name>.{json,md}: <name> is
train_step (GAN stage) or train_step_warmup, then _NAME for --name=NAME or, without it, for the
--config file's name (train_step_compact, train_step_warmup_compact).
"""

from __future__ import annotations

import copy
import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import config_flags

from benchmarks import common
from deepgin_jax import config as config_lib
from deepgin_jax import train_state, train_steps
from deepgin_jax.models.vgg import VGG19_CONV_NAMES, VGGFeatures

FLAGS = flags.FLAGS
flags.DEFINE_list("batches", ["12"], "Global batch sizes in samples (the paper: 12 = 4 x 3).")
flags.DEFINE_list("dtypes", ["float32"], "Compute dtypes (float32, bfloat16).")
flags.DEFINE_list("devices", ["all"], "Device counts to shard the batch over ('all' = every).")
flags.DEFINE_enum("stage", "gan", ["gan", "warmup"], "Which train step.")
flags.DEFINE_integer(
    "width", 64, "Generator base_features (64 = the paper's); with --config: its, unless given."
)
flags.DEFINE_integer("size", 256, "Training crop size; with --config: its, unless given.")
config_flags.DEFINE_config_file(
    "config", None, "A training config to measure (configs/*.py[:variant]).", lock_config=True
)
flags.DEFINE_string(
    "name", None, "Results name suffix (default: the --config file's name; none without it)."
)
flags.DEFINE_bool(
    "vgg", True, "Include the perceptual and style losses (a VGG-19 of random weights)."
)
flags.DEFINE_integer("repeats", 5, "Timed steps.")
flags.DEFINE_float("peak_tflops", None, "Device peak for MFU (default: from the device kind).")
flags.DEFINE_enum(
    "attention_impl",
    None,
    ["xla", "cudnn", "chunked"],
    "The generator's self-attention (default: the config's, automatic).",
)
flags.DEFINE_bool(
    "estimate_only",
    False,
    "Compile without running: XLA's FLOPs and memory analysis per batch (no device memory).",
)
flags.DEFINE_string("out", "benchmarks/results", "Where to write the results.")

VGG_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512)


def random_tree(shapes, rng: np.random.Generator):
    def draw(leaf):
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return np.zeros(leaf.shape, leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)

    return jax.tree.map(draw, shapes)


def random_vgg(rng: np.random.Generator) -> VGGFeatures:
    params, cin = {}, 3
    for name, width in zip(VGG19_CONV_NAMES, VGG_WIDTHS, strict=True):
        params[name] = {
            "kernel": (rng.standard_normal((3, 3, cin, width)) / np.sqrt(9 * cin)).astype(
                np.float32
            ),
            "bias": np.zeros(width, np.float32),
        }
        cin = width
    return VGGFeatures(params=params, convention="torchvision")


def measured_config(dtype_name: str) -> ml_collections.ConfigDict:
    """The config whose step is measured: --config's or the default, in `dtype_name`, with
    --width where given (always without --config) and without the VGG losses for --novgg."""
    config = config_lib.default_config() if FLAGS.config is None else copy.deepcopy(FLAGS.config)
    config.compute_dtype = dtype_name
    if FLAGS.config is None or FLAGS["width"].present:
        config.model.base_features = FLAGS.width
    if not FLAGS.vgg:
        config.loss.perceptual_weight = config.loss.style_weight = 0.0
    if FLAGS.attention_impl:
        config.model.attention_impl = FLAGS.attention_impl
    return config


def crop_size() -> int:
    """--size, or the --config's data.crop_size when --size is not given."""
    if FLAGS.config is None or FLAGS["size"].present:
        return FLAGS.size
    return int(FLAGS.config.data.crop_size)


def results_name() -> str:
    """train_step (GAN stage) or train_step_<stage>, then _<--name or the config file's name>."""
    name = "train_step" if FLAGS.stage == "gan" else f"train_step_{FLAGS.stage}"
    suffix = FLAGS.name
    if suffix is None and FLAGS.config is not None:
        suffix = Path(config_flags.get_config_filename(FLAGS["config"])).stem
    return f"{name}_{suffix}" if suffix else name


def state_shapes(setup: train_state.Setup, size: int) -> train_state.TrainState:
    """The train state's shapes and dtypes at crop size `size`, without running the init."""
    init = functools.partial(train_state.init_train_state, setup, crop_size=size)
    return jax.eval_shape(init, jax.random.key(0))


def step_function(setup: train_state.Setup, config: ml_collections.ConfigDict):
    """The stage's train step with the config's clipping bound, as training binds it."""
    if FLAGS.stage == "gan":
        return functools.partial(
            train_steps.gan_step,
            setup=setup,
            stage_start=0,
            clip_norm=config.optim.g_clip_norm,
            clip_includes_discriminator=config.optim.clip_includes_discriminator,
        )
    return functools.partial(
        train_steps.warmup_step, setup=setup, clip_norm=config.optim.g_clip_norm
    )


def jitted_step(setup: train_state.Setup, config: ml_collections.ConfigDict, mesh: Mesh):
    """The stage's train step, jitted with the batch sharded over `mesh` and the state donated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    in_shardings = (replicated, NamedSharding(mesh, PartitionSpec("data")))
    if FLAGS.stage == "gan":
        in_shardings += (replicated,)  # the VGG-19 weights
    return jax.jit(
        step_function(setup, config),
        in_shardings=in_shardings,
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


def abstract(tree, sharding: NamedSharding):
    """Shapes and dtypes of `tree`'s leaves, placed by `sharding`: arguments to compile for."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def compiled_memory_bytes(compiled) -> float | None:
    """The device memory XLA's buffer assignment plans for a compiled program: arguments,
    outputs not aliased to (donated) arguments, and temporaries; None where unavailable."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # some backends have no memory analysis
        return None
    if stats is None:
        return None
    return float(
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        - stats.alias_size_in_bytes
        + stats.temp_size_in_bytes
    )


def main(argv: list[str]) -> None:
    del argv
    rng = np.random.default_rng(0)
    size = crop_size()
    rows = []
    for dtype_name in FLAGS.dtypes:
        config = measured_config(dtype_name)
        setup = train_state.build_setup(config)
        counting_config = copy.deepcopy(config)
        counting_config.model.attention_impl = "xla"
        counting_setup = train_state.build_setup(counting_config)
        shapes = state_shapes(setup, size)
        state_host = None if FLAGS.estimate_only else random_tree(shapes, rng)
        vgg_host = random_vgg(rng) if FLAGS.vgg and FLAGS.stage == "gan" else None
        counts = [jax.device_count() if d == "all" else int(d) for d in FLAGS.devices]
        for num_devices in counts:
            mesh = Mesh(
                np.array(jax.devices()[:num_devices]),
                ("data",),
                axis_types=(jax.sharding.AxisType.Auto,),
            )
            replicated = NamedSharding(mesh, PartitionSpec())
            batched = NamedSharding(mesh, PartitionSpec("data"))
            step = jitted_step(setup, config, mesh)
            for batch_size in map(int, FLAGS.batches):
                batch = {
                    "image": rng.integers(0, 256, (batch_size, size, size, 3), np.uint8),
                    "mask": (rng.random((batch_size, size, size, 1)) > 0.6).astype(np.uint8),
                }
                if FLAGS.estimate_only:
                    batch = abstract(batch, batched)
                    state = abstract(shapes, replicated)
                else:
                    batch = jax.device_put(batch, batched)
                    state = jax.device_put(state_host, replicated)
                args = (
                    (state, batch)
                    if FLAGS.stage == "warmup"
                    else (state, batch, jax.device_put(vgg_host, replicated))
                )
                start = time.perf_counter()
                lowered = step.lower(*args)
                compiled = lowered.compile()
                compile_s = time.perf_counter() - start
                # All devices' FLOPs: the program before it is partitioned, with XLA's
                # attention (the same program unless another attention is measured).
                if config.model.attention_impl != "xla":
                    lowered = jitted_step(counting_setup, config, mesh).lower(*args)
                flops = common.lowered_flops(lowered)
                row = {
                    "stage": FLAGS.stage,
                    "dtype": dtype_name,
                    "attention": config.model.attention_impl or "auto",
                    "devices": num_devices,
                    "batch": batch_size,
                    "size": size,
                    "width": config.model.base_features,
                    "d_width": config.discriminator.features,
                    "compile_s": compile_s,
                    "tflop_per_step": flops / 1e12 if flops else None,
                    "xla_memory_bytes": compiled_memory_bytes(compiled),
                }
                if not FLAGS.estimate_only:
                    row.update(timed_steps(compiled, args, flops, dtype_name, num_devices))
                rows.append(row)
                del lowered, compiled, args, state, batch
                print(rows[-1], flush=True)
    columns = [
        "stage",
        "dtype",
        "attention",
        "devices",
        "batch",
        "size",
        "width",
        "d_width",
        "step_ms",
        "images_per_s",
        "tflop_per_step",
        "mfu",
        "compile_s",
        "xla_memory_bytes",
        "device_peak_bytes",
        "host_max_rss_bytes",
    ]
    print(common.write_results(results_name(), rows, columns, FLAGS.out).read_text())


def timed_steps(compiled, args: tuple, flops: float | None, dtype_name: str, num_devices: int):
    """Runs the compiled step once (warm-up) and --repeats timed times: step time, images/s,
    MFU, and the process's device peak memory so far (a high-water mark: rows of growing
    batches each show their own)."""
    state, batch, *extra = args
    state, metrics = compiled(state, batch, *extra)  # warm-up call
    common.block(metrics)
    times = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        state, metrics = compiled(state, batch, *extra)
        common.block(metrics)
        times.append(time.perf_counter() - start)
    del state
    step_s = float(np.median(times))
    peak = common.peak_tflops(dtype_name, FLAGS.peak_tflops)
    batch_size = batch["image"].shape[0]
    return {
        "step_ms": step_s * 1e3,
        "images_per_s": batch_size / step_s,
        "mfu": flops / num_devices / step_s / (peak * 1e12) if flops and peak else None,
        **common.peak_memory_bytes(),
    }


if __name__ == "__main__":
    app.run(main)
