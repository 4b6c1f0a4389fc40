"""Orbax checkpoints: generator exports, and training checkpoints with the data iterator. The
checkpoint layout lives here: the item names, the train state's mapping to them, the meta.

Every checkpoint directory is an Orbax composite whose items are named alike:
- `generator`: {"params": ...} of `DeepGIN`;
- `discriminator`: {"params", "spectral"} of `MultiScaleDiscriminator`;
- `meta`: JSON with {"model": DeepGIN fields} and/or {"discriminator": its fields}; training
  adds the step, the stage and the whole config;
- training checkpoints hold both networks and add `g_opt_state` and `d_opt_state`. The
  position in the training data is the step (`data.pipeline`); checkpoints written before that
  also hold a `data_iter` item, which is ignored.

So `load_generator` and `load_discriminator` read a converted reference model, a single
training step directory, a `checkpoints/` folder (its latest step) or a training workdir alike,
local or remote (`gs://...`). Every checkpoint written here also holds the sha256 of its files
(`checkpoint_digests`), checked before it is read.

Orbax is imported by the functions that use it: importing it takes about 0.3 s, which a command
reading only a shipped model (`deepgin_jax.shipped`) need not pay.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from absl import logging

from deepgin_jax import checkpoint_digests
from deepgin_jax.paths import as_path

if TYPE_CHECKING:  # the networks' modules import Flax, which reading a shipped model skips
    from etils import epath

    from deepgin_jax.models.generator import DeepGIN
    from deepgin_jax.train_state import TrainState

CHECKPOINT_SUBDIR = "checkpoints"
META_ITEM = "meta"
GENERATOR_ITEM = "generator"
DISCRIMINATOR_ITEM = "discriminator"


class CheckpointNotFoundError(FileNotFoundError):
    """No usable checkpoint at the given path."""


class CheckpointCorruptError(CheckpointNotFoundError):
    """A checkpoint file is missing, truncated or altered: `file` names it (its digest, written
    with the checkpoint, no longer matches; `checkpoint_digests`)."""

    def __init__(self, file: epath.Path, problem: str):
        super().__init__(f"corrupt checkpoint: {file}: {problem}")
        self.file = file


def verify_checkpoint(
    step_dir: epath.Path, items: Sequence[str] | None = None, *, note_unverified: bool = True
) -> None:
    """Checks `step_dir`'s files (the named items' only, when given) against the digests
    written with it; a checkpoint from before digests is read unchecked, with a note (left to
    the weights' loader where only the meta is read)."""
    try:
        verified = checkpoint_digests.verify(step_dir, items)
    except checkpoint_digests.CorruptFileError as e:
        raise CheckpointCorruptError(e.path, e.problem) from e
    if not verified and note_unverified:
        logging.info("%s has no digests (written before they were kept): not verified", step_dir)


def _save_items(
    directory: str | os.PathLike, items: Mapping[str, Any], overwrite: bool = False
) -> None:
    """Writes an Orbax composite to `directory`.

    With `overwrite`, an existing `directory` is replaced only once the new checkpoint is
    complete: it is written to a temporary sibling, the old one is moved aside, the new one
    renamed into place and the old one deleted. A failure while writing leaves the old
    checkpoint untouched. (On an object store such as GCS a rename copies, so the swap is not
    atomic there; the old checkpoint stays under its `.old-` name until the new one is in place.)
    """
    directory = as_path(directory)
    if directory.exists() and not overwrite:
        raise FileExistsError(
            f"{directory} exists; refusing to overwrite a checkpoint (pass overwrite=True, or "
            "--overwrite on the command line)"
        )
    if not directory.exists():
        _write_items(directory, items)
        return
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging = directory.with_name(f".{directory.name}.new-{tag}")
    retired = directory.with_name(f".{directory.name}.old-{tag}")
    try:
        _write_items(staging, items)
    except BaseException:
        _remove_quietly(staging)
        raise
    directory.rename(retired)
    try:
        staging.rename(directory)
    except BaseException:
        retired.rename(directory)  # put the old checkpoint back
        _remove_quietly(staging)
        raise
    if retired.is_dir():
        retired.rmtree()
    else:
        retired.unlink()
    logging.info("replaced %s", directory)


def _remove_quietly(path: epath.Path) -> None:
    try:
        if path.exists():
            path.rmtree()
    except OSError as e:
        logging.warning("could not remove %s: %s", path, e)


def _write_items(directory: epath.Path, items: Mapping[str, Any]) -> None:
    import orbax.checkpoint as ocp

    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        # Orbax writes into a temporary directory and renames it when complete.
        checkpointer.save(directory, args=ocp.args.Composite(**items))
    checkpoint_digests.write_digests(directory)


def save_generator(
    directory: str | os.PathLike,
    variables: Mapping[str, Any],
    model_config: Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> None:
    """Writes generator variables ({"params": ...}) and its `DeepGIN` fields to `directory`;
    `overwrite` replaces an existing one safely (see `_save_items`)."""
    import orbax.checkpoint as ocp

    _save_items(
        directory,
        {
            GENERATOR_ITEM: ocp.args.StandardSave(dict(variables)),
            META_ITEM: ocp.args.JsonSave({"model": dict(model_config)}),
        },
        overwrite=overwrite,
    )


def save_discriminator(
    directory: str | os.PathLike,
    variables: Mapping[str, Any],
    config: Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> None:
    """Writes discriminator variables ({"params", "spectral"}) and its fields to `directory`;
    `overwrite` replaces an existing one safely (see `_save_items`)."""
    import orbax.checkpoint as ocp

    _save_items(
        directory,
        {
            DISCRIMINATOR_ITEM: ocp.args.StandardSave(dict(variables)),
            META_ITEM: ocp.args.JsonSave({"discriminator": dict(config)}),
        },
        overwrite=overwrite,
    )


def _is_step_directory(path: epath.Path) -> bool:
    # Finalised: on GCS a step is written in place and marked complete by a file.
    import orbax.checkpoint as ocp

    return (path / META_ITEM).is_dir() and ocp.utils.is_checkpoint_finalized(path)


def resolve_checkpoint(path: str | os.PathLike) -> epath.Path:
    """A step directory from a step directory, a `checkpoints/` folder or a workdir (local, or
    a URL such as `gs://bucket/run`)."""
    path = as_path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint path does not exist: {path}")
    if not path.is_dir():
        raise CheckpointNotFoundError(
            f"{path} is a file; a checkpoint is a directory (written by `deepgin_jax.convert` "
            "or by training), its 'checkpoints/' folder or a training workdir"
        )
    if _is_step_directory(path):
        return path
    root = path / CHECKPOINT_SUBDIR if (path / CHECKPOINT_SUBDIR).is_dir() else path
    steps = sorted(
        (int(p.name), p) for p in root.iterdir() if p.name.isdigit() and _is_step_directory(p)
    )
    if not steps:
        raise CheckpointNotFoundError(
            f"no checkpoint found in {path}: expected a directory written by "
            "`deepgin_jax.convert` or by training (with a 'meta' item), a 'checkpoints/' "
            "folder of numbered steps, or a training workdir"
        )
    return steps[-1][1]


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON `meta` item of a checkpoint (see `resolve_checkpoint` for accepted paths)."""
    import orbax.checkpoint as ocp

    step_dir = resolve_checkpoint(path)
    verify_checkpoint(step_dir, [META_ITEM], note_unverified=False)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        restored = checkpointer.restore(
            step_dir, args=ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore()})
        )
    return dict(restored[META_ITEM])


def _restore_on_this_device(
    step_dir: epath.Path, item: str, abstract: Any, description: str
) -> dict[str, Any]:
    """Restores `item` of a checkpoint into the tree of `abstract` (ShapeDtypeStructs), placed
    on this process's first device, so that a checkpoint written by any number of hosts or
    devices restores here. A mismatch is a ValueError that says what was expected."""
    import orbax.checkpoint as ocp

    verify_checkpoint(step_dir, [item])
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract
    )
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        try:
            restored = checkpointer.restore(
                step_dir,
                args=ocp.args.Composite(**{item: ocp.args.StandardRestore(target)}),
            )
        except (ValueError, KeyError) as e:
            raise ValueError(
                f"{step_dir}: the {item} weights do not match {description}: {e}"
            ) from e
    return dict(restored[item])


def load_generator(
    path: str | os.PathLike, **model_overrides: Any
) -> tuple[DeepGIN, dict[str, Any]]:
    """Loads a generator for inference: returns (model, variables).

    `path` may be a converted reference model, a training checkpoint step, a `checkpoints/`
    folder or a training workdir (the latest step is used). `model_overrides` change runtime
    fields such as `dtype` or `attention_impl`, never the architecture.
    """
    from deepgin_jax.models.generator import DeepGIN

    step_dir = resolve_checkpoint(path)
    meta = read_meta(step_dir)
    if "model" not in meta or not (step_dir / GENERATOR_ITEM).is_dir():
        raise CheckpointNotFoundError(f"{step_dir} holds no generator")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["model"].items()}
    model = DeepGIN(**fields, **model_overrides)
    image = jax.ShapeDtypeStruct((1, 64, 64, 3), jax.numpy.float32)
    mask = jax.ShapeDtypeStruct((1, 64, 64, 1), jax.numpy.float32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), image, mask)
    variables = _restore_on_this_device(
        step_dir, GENERATOR_ITEM, abstract, f"its recorded architecture {meta['model']}"
    )
    return model, variables


def load_discriminator(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Loads discriminator weights: returns (its `MultiScaleDiscriminator` fields, variables
    {"params", "spectral"}).

    `path` may be a converted reference discriminator (`save_discriminator`), a training
    checkpoint step, a `checkpoints/` folder or a training workdir (the latest step).
    """
    from deepgin_jax.models.discriminator import SPECTRAL_COLLECTION, MultiScaleDiscriminator

    step_dir = resolve_checkpoint(path)
    meta = read_meta(step_dir)
    if "discriminator" not in meta or not (step_dir / DISCRIMINATOR_ITEM).is_dir():
        raise CheckpointNotFoundError(f"{step_dir} holds no discriminator")
    fields = dict(meta["discriminator"])
    image = jax.ShapeDtypeStruct((1, 64, 64, 3), jax.numpy.float32)
    try:
        abstract = jax.eval_shape(
            MultiScaleDiscriminator(**fields).init, jax.random.key(0), image, image
        )
    except TypeError as e:
        raise ValueError(f"{step_dir}: unusable discriminator fields {fields}: {e}") from e
    abstract = {"params": abstract["params"], SPECTRAL_COLLECTION: abstract[SPECTRAL_COLLECTION]}
    variables = _restore_on_this_device(
        step_dir, DISCRIMINATOR_ITEM, abstract, f"its recorded fields {fields}"
    )
    return fields, variables


# ----------------------------------------------------------------------------------------------
# Training checkpoints: the items, their mapping to the train state, and the meta.

# Items of a training checkpoint besides `generator`, `discriminator` and `meta`.
G_OPT_ITEM = "g_opt_state"
D_OPT_ITEM = "d_opt_state"
TRAIN_ITEMS = (GENERATOR_ITEM, G_OPT_ITEM, DISCRIMINATOR_ITEM, D_OPT_ITEM)


def train_items(state: TrainState) -> dict[str, Any]:
    """A `train_state.TrainState` as the arrays of `TRAIN_ITEMS`. The networks are stored as
    `load_generator` and `load_discriminator` read them; the step is in the meta."""
    from deepgin_jax.models.discriminator import SPECTRAL_COLLECTION

    return {
        GENERATOR_ITEM: {"params": state.g_params},
        G_OPT_ITEM: state.g_opt_state,
        DISCRIMINATOR_ITEM: {"params": state.d_params, SPECTRAL_COLLECTION: state.d_spectral},
        D_OPT_ITEM: state.d_opt_state,
    }


def state_from_train_items(items: Mapping[str, Any], step: int, like: TrainState) -> TrainState:
    """The inverse of `train_items`: a state of the structure of `like` (whose `step` gives the
    step's sharding) holding `items` at `step`."""
    from deepgin_jax.models.discriminator import SPECTRAL_COLLECTION

    discriminator = items[DISCRIMINATOR_ITEM]
    return like.replace(
        step=jax.device_put(np.asarray(step, np.int32), like.step.sharding),
        g_params=items[GENERATOR_ITEM]["params"],
        g_opt_state=items[G_OPT_ITEM],
        d_params=discriminator["params"],
        d_spectral=discriminator[SPECTRAL_COLLECTION],
        d_opt_state=items[D_OPT_ITEM],
    )


def train_meta(
    step: int,
    stage: str,
    model: Mapping[str, Any],
    discriminator: Mapping[str, Any],
    config: Mapping[str, Any],
) -> dict[str, Any]:
    """The `meta` item of a training checkpoint: the step, its stage, both networks' fields
    (what `load_generator`/`load_discriminator` build) and the whole config as JSON."""
    return {
        "step": int(step),
        "stage": stage,
        "model": dict(model),
        "discriminator": dict(discriminator),
        "config": dict(config),
    }


class TrainCheckpointManager:
    """Saves and restores training checkpoints in `directory/<step>/` with Orbax.

    A checkpoint holds the train state (`train_items`) and the JSON meta (`train_meta`); with
    the step, which fixes the position in the training data, a resumed run continues exactly,
    on any number of processes and devices. Saving is asynchronous and
    collective (every process calls `save` at the same step); a checkpoint only appears under
    its final name once complete, so a run killed mid-save leaves the previous checkpoint as
    the latest. Once a save has finished on every process (at the next `save` or at `close`),
    process 0 records the digests of its files (`checkpoint_digests`); restoring checks them
    and falls back past checkpoints that fail (`latest_verified_step`).
    """

    def __init__(
        self, directory: str | os.PathLike, *, max_to_keep: int, keep_steps: Sequence[int] = ()
    ):
        """Keeps the latest `max_to_keep` checkpoints, and those of `keep_steps` for good."""
        import orbax.checkpoint as ocp

        policies = ocp.checkpoint_managers
        options = ocp.CheckpointManagerOptions(
            create=True,
            enable_async_checkpointing=True,
            preservation_policy=policies.AnyPreservationPolicy(
                [policies.LatestN(max_to_keep), policies.CustomSteps(list(keep_steps))]
            ),
        )
        self._manager = ocp.CheckpointManager(as_path(directory), options=options)
        self._undigested_step: int | None = None
        self._verified_steps: set[int] = set()

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def step_directory(self, step: int) -> epath.Path:
        return as_path(self._manager.directory) / str(step)

    def read_meta(self, step: int) -> dict[str, Any]:
        """The JSON meta of checkpoint `step`, without restoring the arrays."""
        return read_meta(self.step_directory(step))

    def latest_verified_step(self) -> int | None:
        """The newest checkpoint whose files match their digests (or that has none: written
        before digests). Newer ones that fail are logged with the file at fault and moved aside
        to `<step>.corrupt-<tag>`, so that the run can write those steps again. Raises
        CheckpointCorruptError when checkpoints exist and none verifies."""
        failed = []
        verified = None
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                self._verify(step)
            except CheckpointCorruptError as e:
                logging.warning("checkpoint %d is unusable: %s", step, e)
                failed.append(step)
                continue
            verified = step
            break
        if failed and verified is None:
            raise CheckpointCorruptError(
                self.step_directory(failed[0]),
                f"no checkpoint in {self._manager.directory} verifies (steps {failed}; see the "
                "log for each one's file); move them away to start afresh",
            )
        if failed:
            logging.warning(
                "falling back to checkpoint %d: later checkpoint(s) %s failed verification",
                verified,
                failed,
            )
            self._set_aside(failed)
        return verified

    def _verify(self, step: int) -> None:
        if step not in self._verified_steps:
            verify_checkpoint(self.step_directory(step))
            self._verified_steps.add(step)

    def _set_aside(self, steps: Sequence[int]) -> None:
        if jax.process_index() == 0:
            for step in steps:
                source = self.step_directory(step)
                target = source.with_name(f"{step}.corrupt-{uuid.uuid4().hex[:8]}")
                source.rename(target)
                logging.warning("moved %s aside to %s", source, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("deepgin_set_aside_corrupt_checkpoints")
        self._manager.reload()

    def _write_pending_digests(self) -> None:
        """Records the digests of the last save once it finished on every process (Orbax
        finalises on process 0 after all processes wrote), on process 0 only."""
        if self._undigested_step is None:
            return
        self._manager.wait_until_finished()
        step, self._undigested_step = self._undigested_step, None
        if jax.process_index() == 0 and step in self._manager.all_steps():
            checkpoint_digests.write_digests(self.step_directory(step))

    def save(self, state: TrainState, meta: Mapping[str, Any]) -> None:
        """Saves `state` at `meta["step"]` with its meta (`train_meta`)."""
        import orbax.checkpoint as ocp

        self._write_pending_digests()

        items = train_items(state)
        args = {name: ocp.args.StandardSave(items[name]) for name in TRAIN_ITEMS}
        args[META_ITEM] = ocp.args.JsonSave(dict(meta))
        self._manager.save(meta["step"], args=ocp.args.Composite(**args))
        self._undigested_step = meta["step"]

    def restore(
        self, abstract_state: TrainState, step: int | None = None
    ) -> tuple[TrainState, dict[str, Any]]:
        """Restores checkpoint `step` (default: the latest that verifies,
        `latest_verified_step`) into the structure and shardings of `abstract_state`
        (ShapeDtypeStructs). Returns (state, meta). Raises CheckpointCorruptError when the given
        `step` fails verification."""
        import orbax.checkpoint as ocp

        step = self.latest_verified_step() if step is None else step
        if step is None:
            raise CheckpointNotFoundError(f"no checkpoint in {self._manager.directory}")
        self._verify(step)
        abstract_items = train_items(abstract_state)
        args = {name: ocp.args.StandardRestore(abstract_items[name]) for name in TRAIN_ITEMS}
        args[META_ITEM] = ocp.args.JsonRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        meta = dict(restored[META_ITEM])
        return state_from_train_items(restored, meta["step"], abstract_state), meta

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._write_pending_digests()
        self._manager.close()
