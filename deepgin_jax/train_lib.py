"""The training loop: `train_and_evaluate(config, workdir)` runs DeepGIN's two stages (paper
sec. 5.1, spec 5) and resumes from the workdir's latest checkpoint.

The warm-up runs for `config.warmup_steps` steps, then the GAN stage for `config.gan_steps`,
starting from the warm-up's weights with a fresh generator optimizer state and its own
learning-rate schedule (spec 5.3, 5.5). One run does both; `config.init_from` and
`config.init_discriminator_from` start from other weights instead.

The maths is elsewhere: `train_state` (state, networks, optimizers, schedules) and
`train_steps` (the pure, jitted steps). Here is what touches the outside world: the mesh and
the sharded batches, the starting state (fresh, from other weights, or resumed after checking
the config against the saved one), checkpoints (`checkpointing`), metrics and sample grids
(`metric_writers`), and a stop on SIGTERM or Ctrl-C that saves first (`preemption`).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging as std_logging
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from deepgin_jax import (
    checkpointing,
    metric_writers,
    preemption,
    sharding,
    shipped,
    throughput,
)
from deepgin_jax.config import (
    GAN,
    PAPER_ITEMS_PER_BATCH,
    WARMUP,
    architecture,
    check_resume_config,
    config_json,
    lr_scale,
    needs_vgg,
    stage_at,
    validate_config,
)
from deepgin_jax.data import pipeline
from deepgin_jax.models import SPECTRAL_COLLECTION
from deepgin_jax.paths import as_path, is_remote
from deepgin_jax.train_state import Setup, TrainState, build_setup, init_train_state, lr_schedule
from deepgin_jax.train_steps import (
    clip_gradients,
    gan_step,
    generate,
    prepare_batch,
    train_step,
    warmup_step,
)

# The loop, and the state and step API under the name it had before `train_state` and
# `train_steps` were split off.
__all__ = [
    "GAN",
    "WARMUP",
    "CannotStartError",
    "NonFiniteLossError",
    "Setup",
    "TrainState",
    "architecture",
    "build_setup",
    "clip_gradients",
    "gan_step",
    "generate",
    "init_train_state",
    "initial_state",
    "lr_schedule",
    "preflight",
    "prepare_batch",
    "train_and_evaluate",
    "train_step",
    "validate_config",
    "warmup_step",
]

Array = jax.Array


class NonFiniteLossError(RuntimeError):
    """Training produced a non-finite loss or gradient; the last good checkpoint was kept."""


@dataclasses.dataclass(frozen=True)
class _Run:
    """The pieces of one run that the loop uses."""

    config: ml_collections.ConfigDict
    setup: Setup
    mesh: jax.sharding.Mesh
    layout: pipeline.BatchLayout
    manager: checkpointing.TrainCheckpointManager
    writer: metric_writers.MetricWriter
    data_iterator: Any
    vgg: Any
    sample_batch: dict[str, Array] | None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains (resuming from `workdir` if it holds checkpoints) and returns the final state.

    First `preflight` checks everything the run needs (a resumed run's config against the
    saved one included) and raises CannotStartError before anything is written; then the
    workdir, its `config.json` and `checkpoints/` are made. SIGTERM and Ctrl-C save a checkpoint
    and stop. `workdir` may be local or a URL that etils.epath and Orbax reach
    (`gs://bucket/run`).
    """
    preflight(config, workdir)
    logging.info(
        "JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices()
    )
    workdir_path = as_path(workdir)
    workdir_path.mkdir(parents=True, exist_ok=True)
    mesh = sharding.create_mesh()
    layout = _batch_layout(config)
    setup = build_setup(config)
    manager = checkpointing.TrainCheckpointManager(
        workdir_path / checkpointing.CHECKPOINT_SUBDIR,
        max_to_keep=config.keep_checkpoints,
        keep_steps=_warmup_end(config),
    )
    with contextlib.ExitStack() as stack:
        stack.callback(manager.close)
        resumed_step = manager.latest_verified_step()
        _write_config(config, workdir_path)
        if resumed_step is None:
            state = initial_state(config, setup, mesh)
        else:
            state = _restore(config, setup, manager, mesh)
        # The batches of a step depend on the step alone: a resumed run on any layout reads on.
        data_iterator = pipeline.create_train_iterator(
            config.data,
            local_device_count=layout.local_device_count,
            start_step=int(jax.device_get(state.step)),
        )
        sample_batch = _sample_batch(config, mesh) if config.sample_every_steps else None
        _log_layout(config, layout)
        writer = metric_writers.MetricWriter(
            workdir_path, enabled=jax.process_index() == 0, resumed_step=resumed_step
        )
        stack.callback(writer.close)
        vgg = _load_vgg(config, mesh)
        run = _Run(config, setup, mesh, layout, manager, writer, data_iterator, vgg, sample_batch)
        return _train_loop(run, state)


def _train_loop(run: _Run, state: TrainState) -> TrainState:
    """Steps from `state.step` to the end of the GAN stage; logs, samples and saves on the
    config's periods, and saves and stops early when any process is signalled."""
    config = run.config
    steps = _jit_steps(config, run.setup, run.mesh)
    replicated = sharding.replicated(run.mesh)
    p_generate = jax.jit(functools.partial(generate, setup=run.setup), out_shardings=replicated)
    fresh_g_opt_state = jax.jit(run.setup.g_tx.init, out_shardings=replicated)
    total_steps = config.warmup_steps + config.gan_steps
    start_step = int(jax.device_get(state.step))
    log = _MetricsLog(run.writer, config, start_step, total_steps, run.layout.real_samples)
    profiler = throughput.StepProfiler(
        run.writer.workdir / "profile",
        config.profile_first_step,
        config.profile_last_step,
    )
    stop_signal = preemption.StopSignal()
    stop = preemption.StopAgreement(stop_signal, run.mesh)
    stop_signal.install()
    try:
        for step in range(start_step, total_steps):
            if step == config.warmup_steps and step > 0:
                # The GAN stage starts from the warm-up's weights with a fresh generator
                # optimizer state, so its Adam moments and schedule start at zero (spec 5.5).
                # (D's optimizer state is untouched by the warm-up.)
                state = state.replace(g_opt_state=fresh_g_opt_state(state.g_params))
            batch = sharding.shard_batch(next(run.data_iterator), run.mesh)
            stage = stage_at(step, config)
            log.count_flops(stage, steps[stage], (state, batch, run.vgg))
            profiler.before_step(step + 1)
            state, step_metrics = steps[stage](state, batch, run.vgg)
            done = step + 1
            profiler.after_step(done, step_metrics)
            log.add(done, step_metrics)
            stopping = stop.should_stop()  # once per step: a later signal waits for the next
            save = (
                done == total_steps
                or stopping
                or _every(done, config.checkpoint_every_steps)
                or done in _warmup_end(config)
            )
            if save or _every(done, config.log_every_steps):
                log.flush()  # every checkpoint follows the non-finite check and a record
            if run.sample_batch is not None and (
                _every(done, config.sample_every_steps) or done == total_steps
            ):
                _write_samples(p_generate(state.g_params, run.sample_batch), done, run.writer)
            if save:
                run.writer.flush()  # a remote metrics.jsonl holds every record a resume keeps
                run.manager.save(state, _meta(config, done))
            if stopping:
                logging.warning(
                    "stopped at step %d of %d; run the same command to resume", done, total_steps
                )
                break
    finally:
        stop_signal.uninstall()
        profiler.stop()
        log.close()
    return state


def _jit_steps(
    config: ml_collections.ConfigDict, setup: Setup, mesh: jax.sharding.Mesh
) -> dict[str, Any]:
    """`train_step` of each stage, jitted: the batch sharded over the data axis, the state and
    the VGG-19 weights replicated, the state donated."""
    replicated, batched = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    return {
        stage: jax.jit(
            functools.partial(
                train_step,
                setup=setup,
                stage=stage,
                stage_start=config.warmup_steps,
                clip_norm=config.optim.g_clip_norm,
                clip_includes_discriminator=config.optim.clip_includes_discriminator,
            ),
            in_shardings=(replicated, batched, replicated),
            out_shardings=(replicated, replicated),
            donate_argnums=0,
        )
        for stage in (WARMUP, GAN)
    }


def _every(step: int, period: int) -> bool:
    """Whether a periodic event (period 0 = never) falls on `step`."""
    return period > 0 and step % period == 0


def _warmup_end(config: ml_collections.ConfigDict) -> list[int]:
    """The step of the warm-up's last checkpoint, always saved and kept for good (the reference
    publishes it on its own; it is the L1-only model to compare with or to start other GAN runs
    from), when the run has both stages."""
    return [config.warmup_steps] if config.warmup_steps and config.gan_steps else []


def _batch_layout(config: ml_collections.ConfigDict) -> pipeline.BatchLayout:
    return pipeline.BatchLayout.of(config.data, jax.process_count(), jax.local_device_count())


def _log_layout(config: ml_collections.ConfigDict, layout: pipeline.BatchLayout) -> None:
    """The first lines to check on a cluster: devices, processes, the batch on each device."""
    logging.info(
        "%d devices on %d processes (%s); %s",
        jax.device_count(),
        jax.process_count(),
        jax.devices()[0].device_kind,
        layout.describe(),
    )
    logging.info(
        "learning rates: G %g, D %g (optim.lr_scaling=%r, data.items_per_batch=%d; the paper's "
        "is %d)",
        config.optim.g_lr * lr_scale(config),
        config.optim.d_lr * lr_scale(config),
        config.optim.lr_scaling,
        config.data.items_per_batch,
        PAPER_ITEMS_PER_BATCH,
    )


# ----------------------------------------------------------------------------------------------
# The starting state.


def initial_state(
    config: ml_collections.ConfigDict, setup: Setup, mesh: jax.sharding.Mesh
) -> TrainState:
    """A fresh run's state, replicated over `mesh`: the initialisers (spec 5.6), then the
    weights of `config.init_from` (generator) and `config.init_discriminator_from`
    (discriminator parameters and spectral-norm vectors), as the reference's GAN stage starts
    from the warm-up's G and D (spec 5.5). Optimizer states are fresh.

    Raises FileNotFoundError or ValueError naming the config key and the path when a path does
    not exist or holds a network other than the configured one.
    """
    replicated = sharding.replicated(mesh)
    init = jax.jit(
        functools.partial(init_train_state, setup, crop_size=config.data.crop_size),
        out_shardings=replicated,
    )
    state = init(jax.random.key(config.seed))
    if config.init_from:
        state = _generator_from(config, state, replicated)
    if config.init_discriminator_from:
        state = _discriminator_from(config, state, replicated)
    return state


def _generator_from(
    config: ml_collections.ConfigDict, state: TrainState, replicated: jax.sharding.Sharding
) -> TrainState:
    path = config.init_from
    try:
        model, variables = shipped.load_any_generator(path)  # whatever --checkpoint accepts
    except FileNotFoundError as e:
        raise checkpointing.CheckpointNotFoundError(f"config.init_from={path!r}: {e}") from e
    if _shapes(variables["params"]) != _shapes(state.g_params):
        recorded = {field: getattr(model, field) for field in architecture(config)}
        raise ValueError(
            f"config.init_from={path!r} holds a generator of another architecture than "
            f"config.model ({architecture(config)}): its recorded fields are {recorded}"
        )
    logging.info("generator initialised from %s", path)
    # The fresh Adam states are zeros shaped like the parameters: they fit the loaded ones.
    return state.replace(g_params=sharding.replicate(variables["params"], replicated.mesh))


def _discriminator_from(
    config: ml_collections.ConfigDict, state: TrainState, replicated: jax.sharding.Sharding
) -> TrainState:
    path = config.init_discriminator_from
    try:
        fields, variables = checkpointing.load_discriminator(path)
    except FileNotFoundError as e:
        raise checkpointing.CheckpointNotFoundError(
            f"config.init_discriminator_from={path!r}: {e}"
        ) from e
    wanted = config.discriminator.to_dict()
    loaded = {"params": variables["params"], SPECTRAL_COLLECTION: variables[SPECTRAL_COLLECTION]}
    expected = {"params": state.d_params, SPECTRAL_COLLECTION: state.d_spectral}
    if fields != wanted or _shapes(loaded) != _shapes(expected):
        raise ValueError(
            f"config.init_discriminator_from={path!r} holds a discriminator with {fields}; "
            f"config.discriminator is {wanted}"
        )
    loaded = sharding.replicate(loaded, replicated.mesh)
    logging.info("discriminator initialised from %s", path)
    return state.replace(d_params=loaded["params"], d_spectral=loaded[SPECTRAL_COLLECTION])


def _shapes(tree: Any) -> Any:
    return jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), tree)


def _restore(
    config: ml_collections.ConfigDict,
    setup: Setup,
    manager: checkpointing.TrainCheckpointManager,
    mesh: jax.sharding.Mesh,
) -> TrainState:
    """The latest checkpoint's state, replicated over `mesh` (saved on any layout)."""
    replicated = sharding.replicated(mesh)
    init = functools.partial(init_train_state, setup, crop_size=config.data.crop_size)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        jax.eval_shape(init, jax.random.key(config.seed)),
    )
    state, meta = manager.restore(abstract)
    logging.info("resumed from step %d (%s stage)", meta["step"], meta["stage"])
    return state


def _load_vgg(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Any:
    """VGG-19 for the perceptual and style losses (spec 5.1), replicated; None when unused."""
    if not config.gan_steps or not needs_vgg(config.loss):
        return None
    from deepgin_jax.models.vgg import load_vgg19

    vgg = load_vgg19(config.vgg_weights, taps=config.loss.vgg_taps)
    logging.info(
        "perceptual and style losses: VGG-19 from %s (%s input convention, %s taps)",
        config.vgg_weights,
        vgg.convention,
        config.loss.vgg_taps,
    )
    return sharding.replicate(vgg, mesh)


# ----------------------------------------------------------------------------------------------
# What the run writes: config.json, checkpoint meta, metrics, sample grids.


def _write_config(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
    if jax.process_index() != 0:
        return
    from deepgin_jax.atomic import atomic_write

    with atomic_write(workdir / "config.json", "w") as f:
        f.write(config.to_json_best_effort(indent=2))


def _meta(config: ml_collections.ConfigDict, step: int) -> dict[str, Any]:
    return checkpointing.train_meta(
        step,
        stage_at(step, config),
        architecture(config),
        config.discriminator.to_dict(),
        config_json(config),
    )


class _MetricsLog:
    """Collects each step's metrics on the device and writes them at the logged steps: one
    device sync per flush, a progress bar with images/s. Each record has the interval's
    throughput (`throughput.Throughput`: images/s, TFLOP/s, MFU, examples seen, device hours;
    `images_per_step` real images a step)."""

    def __init__(
        self,
        writer: metric_writers.MetricWriter,
        config: ml_collections.ConfigDict,
        start_step: int,
        total_steps: int,
        images_per_step: int,
    ) -> None:
        from tqdm import tqdm

        self._writer, self._config = writer, config
        self._pending: list[tuple[int, dict]] = []
        self._throughput = throughput.Throughput(
            images_per_step=images_per_step,
            num_devices=jax.device_count(),
            device_peak=throughput.peak_flops(jax.devices()[0].device_kind, config.compute_dtype),
            start_time=time.perf_counter(),
            **_resumed_totals(writer, start_step, images_per_step),
        )
        self._progress = tqdm(
            total=total_steps,
            initial=start_step,
            unit="step",
            disable=jax.process_index() != 0,
            dynamic_ncols=True,
            smoothing=0.1,
        )

    def count_flops(self, stage: str, jitted_step: Any, args: tuple) -> None:
        """FLOPs of `stage`'s step from XLA's cost analysis of the step lowered for `args`
        (a trace, no compile), once per stage."""
        if stage not in self._throughput.flops:
            self._throughput.set_flops(stage, throughput.cost_flops(jitted_step.lower(*args)))

    def add(self, step: int, step_metrics: dict) -> None:
        self._pending.append((step, step_metrics))
        self._progress.update(1)

    def flush(self) -> None:
        """Fetches the pending steps' metrics, raises NonFiniteLossError on a non-finite step,
        and writes the last one's scalars (metrics.jsonl, TensorBoard)."""
        pending, self._pending = self._pending, []
        stage_steps = collections.Counter(stage_at(step - 1, self._config) for step, _ in pending)
        rates = self._throughput.record(stage_steps, time.perf_counter())
        fetched = jax.device_get(pending)
        for step, values in fetched:
            if not bool(values["finite"]):
                bad = {k: float(v) for k, v in values.items() if k != "finite"}
                raise NonFiniteLossError(
                    f"non-finite loss or gradient at step {step} "
                    f"({stage_at(step - 1, self._config)} stage): {bad}. The update was not "
                    "applied and no checkpoint was written after it; the latest checkpoint in "
                    "the workdir is the last good state. Lower the learning rate, enable "
                    "optim.g_clip_norm, or check the data."
                )
        step, values = fetched[-1]
        scalars = {k: float(v) for k, v in values.items() if k != "finite"}
        scalars["stage"] = stage_at(step - 1, self._config)
        scalars.update(rates)
        postfix = {"img/s": f"{rates['images_per_second']:.1f}"}
        if "mfu" in rates:
            postfix["MFU"] = f"{rates['mfu']:.1%}"
        postfix["g_loss"] = f"{scalars['g_loss']:.4f}"
        self._progress.set_postfix(postfix, refresh=False)
        self._writer.write_scalars(step, scalars)
        logging.log_every_n_seconds(logging.INFO, "step %d: %s", 30, step, scalars)

    def close(self) -> None:
        self._progress.close()


def _resumed_totals(
    writer: metric_writers.MetricWriter, start_step: int, images_per_step: int
) -> dict[str, float]:
    """A resumed run's examples seen and device hours so far: its last record's (every
    checkpoint follows one), or for a run logged without them, its steps' images."""
    records = []
    if start_step and (writer.workdir / metric_writers.METRICS_FILE).is_file():
        records = [r for r in metric_writers.read_metrics(writer.workdir) if "examples_seen" in r]
    if records:
        last = records[-1]
        return {"examples_seen": last["examples_seen"], "device_hours": last["device_hours"]}
    return {"examples_seen": float(start_step * images_per_step), "device_hours": 0.0}


def _sample_batch(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> dict[str, Array]:
    """A fixed batch for sample grids and running metrics: the first batch of the training
    data under another seed (so the training iterator is not disturbed)."""
    data = ml_collections.ConfigDict(config.data.to_dict())
    data.seed = config.data.seed + 1_000_003
    data.num_workers = 0
    iterator = pipeline.create_train_iterator(data, local_device_count=jax.local_device_count())
    return sharding.shard_batch(next(iterator), mesh)


def _write_samples(
    samples: dict[str, Array], step: int, writer: metric_writers.MetricWriter
) -> None:
    samples = jax.device_get(samples)
    if "weight" in samples:  # the layout's padding: copies of real samples
        samples = {k: v[samples["weight"] > 0] for k, v in samples.items()}
    grid = metric_writers.image_grid(
        [samples["masked"], samples["coarse"], samples["completed"], samples["target"]]
    )
    writer.write_image(step, "samples", grid)
    writer.write_scalars(
        step,
        {
            "sample/psnr": float(np.mean(samples["psnr"])),
            "sample/ssim": float(np.mean(samples["ssim"])),
            "sample/l1": float(np.mean(samples["l1"])),
        },
    )


# ----------------------------------------------------------------------------------------------
# Before anything is written: the checks a run must pass to start.


class CannotStartError(ValueError):
    """The run cannot start, for a reason the message names with its fix; `preflight` raised it
    before anything was written."""


def preflight(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Checks everything a run needs before it writes a file: the workdir can be written, the
    config's values (`validate_config`, the VGG-19 file included), the training images, the
    batch against the devices, and a resumed run's config against the saved one (or the
    `init_from` paths of a fresh one).

    Raises CannotStartError naming the problem and its fix (one line, for the command line).
    """
    _check_workdir(workdir)
    _check_image_source_is_set(config.data)
    try:
        validate_config(config)
    except ValueError as e:
        raise CannotStartError(_one_line(e)) from e
    _check_training_images(config.data)
    resumed = _latest_readable_meta(as_path(workdir))
    if resumed is not None:
        step_dir, meta = resumed
        try:
            check_resume_config(config, meta, str(step_dir))
        except ValueError as e:
            raise CannotStartError(_one_line(e)) from e
        return
    checks = {
        "init_from": shipped.check_generator_path,
        "init_discriminator_from": checkpointing.resolve_checkpoint,
    }
    for key, check in checks.items():
        if config[key]:
            try:
                check(config[key])
            except FileNotFoundError as e:
                raise CannotStartError(
                    f"config.{key}={config[key]!r}: {_one_line(e)}; fix --config.{key}"
                ) from e


def _one_line(error: BaseException) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def _check_workdir(workdir: str) -> None:
    """The workdir is a folder, or can be made one, that this process can write in."""
    if not workdir:
        raise CannotStartError("--workdir is empty: give a folder for the run's files")
    if is_remote(workdir):
        return  # a bucket's permissions show on the first write, which Orbax reports
    path = Path(workdir)
    if path.exists() and not path.is_dir():
        raise CannotStartError(f"--workdir={workdir} is a file, not a folder: choose another")
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise CannotStartError(
            f"cannot make --workdir={workdir}: {existing} is a file, not a folder; choose another"
        )
    try:
        # Creating a nameless file is the one test that holds for root and read-only mounts.
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise CannotStartError(
            f"cannot write in {existing} to make --workdir={workdir} ({e.strerror}): choose a "
            "writable --workdir"
            if existing != path
            else f"cannot write in --workdir={workdir} ({e.strerror}): choose a writable one"
        ) from e


def _check_image_source_is_set(data: ml_collections.ConfigDict) -> None:
    if not data.folder and not data.dataset:
        raise CannotStartError(
            "no training images: set --config.data.folder=DIR (a folder of photos) or "
            "--config.data.dataset=NAME (prepared by `python -m deepgin_jax.data.prepare`)"
        )


def _check_training_images(data: ml_collections.ConfigDict) -> None:
    """The configured folder or prepared dataset holds images enough for every process."""
    if data.folder and not Path(data.folder).is_dir():
        raise CannotStartError(
            f"--config.data.folder={data.folder}: no such folder; set it to a folder of photos"
        )
    try:
        with _without_tfds_warnings():
            count = len(pipeline.open_records(data))
    except (FileNotFoundError, ValueError) as e:
        fix = (
            "set --config.data.folder to a folder of photos"
            if data.folder
            else "or train on a folder of photos with --config.data.folder=DIR"
        )
        raise CannotStartError(f"{_one_line(e)} ({fix})") from e
    if count == 0:
        raise CannotStartError("the training split has no images: add some, or set another one")


def _latest_readable_meta(workdir: epath.Path) -> tuple[epath.Path, dict] | None:
    """(step folder, meta) of the newest checkpoint in `workdir` whose meta verifies and
    reads, or None for a fresh run. (Which checkpoint the run resumes from is decided later,
    by `TrainCheckpointManager.latest_verified_step`, which checks every file.)"""
    root = workdir / checkpointing.CHECKPOINT_SUBDIR
    if not root.is_dir():
        return None
    steps = sorted(
        ((int(p.name), p) for p in root.iterdir() if p.name.isdigit()),
        key=lambda step: step[0],
        reverse=True,
    )
    for _, step_dir in steps:
        try:
            return step_dir, checkpointing.read_meta(step_dir)
        except checkpointing.CheckpointNotFoundError:  # corrupt or unfinished: an older one
            continue
    return None


class _DropTfdsWarnings(std_logging.Filter):
    def filter(self, record: std_logging.LogRecord) -> bool:
        return "/tensorflow_datasets/" not in record.pathname


@contextlib.contextmanager
def _without_tfds_warnings() -> Any:
    """Drops TFDS's log lines while the dataset is looked up: on a dataset that is not prepared
    it warns about the folder it looked in, which the error then names with the fix."""
    logger, quiet = logging.get_absl_logger(), _DropTfdsWarnings()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)
