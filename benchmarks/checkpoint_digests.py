"""The cost of checkpoint digests (`deepgin_jax.checkpoint_digests`) for the full-size model:

    python -m benchmarks.checkpoint_digests [--config configs/ade20k.py] [--folder DIR]

Writes a training checkpoint of the config's state (generator, discriminator, both Adam
states; shapes from `jax.eval_shape`, random float32 values: hashing time does not depend on
them) with Orbax as training does, then times recording the digests (at save) and checking
them (at restore) beside Orbax's own save and restore of the same arrays. Prints one JSON line.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags

from deepgin_jax import checkpoint_digests, checkpointing
from deepgin_jax.config import apply_variant, default_config
from deepgin_jax.train_state import build_setup, init_train_state

_FOLDER = flags.DEFINE_string("folder", "", "Where to write the checkpoint (default: a temp dir).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timings per operation (the median is reported).")


def _random_like(abstract, seed: int = 0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: (
            rng.standard_normal(x.shape, dtype=np.float32).astype(x.dtype)
            if np.issubdtype(x.dtype, np.floating)
            else np.zeros(x.shape, x.dtype)
        ),
        abstract,
    )


def _median_seconds(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv: list[str]) -> None:
    del argv
    config = apply_variant(default_config(), None)
    setup = build_setup(config)
    abstract = jax.eval_shape(
        functools.partial(init_train_state, setup, crop_size=config.data.crop_size),
        jax.random.key(0),
    )
    items = _random_like(checkpointing.train_items(abstract))
    root = Path(_FOLDER.value or tempfile.mkdtemp(prefix="digest-bench-"))
    step_dir = root / "1"
    if step_dir.exists():
        shutil.rmtree(step_dir)

    def save():
        if step_dir.exists():
            shutil.rmtree(step_dir)
        args = {name: ocp.args.StandardSave(items[name]) for name in checkpointing.TRAIN_ITEMS}
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
            checkpointer.save(step_dir, args=ocp.args.Composite(**args))

    def restore():
        args = {name: ocp.args.StandardRestore(items[name]) for name in checkpointing.TRAIN_ITEMS}
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
            checkpointer.restore(step_dir, args=ocp.args.Composite(**args))

    save_s = _median_seconds(save, _REPEATS.value)
    restore_s = _median_seconds(restore, _REPEATS.value)
    record_s = _median_seconds(lambda: checkpoint_digests.write_digests(step_dir), _REPEATS.value)
    verify_s = _median_seconds(lambda: checkpoint_digests.verify(step_dir), _REPEATS.value)
    files = [p for p in step_dir.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    parameters = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(items))
    print(
        json.dumps(
            {
                "arrays": parameters,
                "checkpoint_bytes": size,
                "files": len(files),
                "orbax_save_s": round(save_s, 3),
                "orbax_restore_s": round(restore_s, 3),
                "record_digests_s": round(record_s, 3),
                "verify_digests_s": round(verify_s, 3),
                "hash_MB_per_s": round(size / 1e6 / verify_s, 1),
                "repeats": _REPEATS.value,
            }
        )
    )
    if not _FOLDER.value:
        shutil.rmtree(root)


if __name__ == "__main__":
    app.run(main)
