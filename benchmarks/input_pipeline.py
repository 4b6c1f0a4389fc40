"""Input pipeline throughput: items/s and samples/s for several Grain worker counts.

    python benchmarks/input_pipeline.py [--folder DIR | --dataset NAME [--data_dir DIR]]
        [--workers 0,1,2] [--batches 30] [--augmentation reference|crops]

One item = one photo decoded, augmented and given its K masks; one sample = one (image, mask)
pair of the batch (items * K). The default folder is the bundled sample photos. Worker start-up
and the first `--warmup` batches are excluded from the rate.
"""

from __future__ import annotations

import time

from absl import app, flags

from deepgin_jax.data import SAMPLES_DIR, pipeline

_FOLDER = flags.DEFINE_string("folder", str(SAMPLES_DIR), "Folder of training images.")
_DATASET = flags.DEFINE_string("dataset", "", "Prepared dataset to read instead of --folder.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data folder of --dataset.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Worker counts to measure.")
_BATCHES = flags.DEFINE_integer("batches", 30, "Batches timed per worker count.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Batches read before timing starts.")
_AUGMENTATION = flags.DEFINE_enum("augmentation", "reference", ["reference", "crops"], "")
_ITEMS = flags.DEFINE_integer("items_per_batch", 4, "Images per batch.")
_THREADS = flags.DEFINE_integer("num_threads", 4, "Reader threads per process/worker.")


def measure(num_workers: int) -> dict[str, float]:
    """Times `--batches` batches of a fresh pipeline with `num_workers` workers."""
    config = pipeline.default_data_config()
    config.folder = "" if _DATASET.value else _FOLDER.value
    config.dataset, config.data_dir = _DATASET.value, _DATA_DIR.value
    config.augmentation = _AUGMENTATION.value
    config.items_per_batch = _ITEMS.value
    config.num_workers = num_workers
    config.num_threads = _THREADS.value
    start = time.perf_counter()
    iterator = pipeline.create_train_iterator(config, process_index=0, process_count=1)
    for _ in range(_WARMUP.value):
        next(iterator)
    started = time.perf_counter()
    samples = 0
    for _ in range(_BATCHES.value):
        samples += next(iterator)["image"].shape[0]
    elapsed = time.perf_counter() - started
    items = _BATCHES.value * config.items_per_batch
    return {
        "startup_s": started - start,
        "items_per_s": items / elapsed,
        "samples_per_s": samples / elapsed,
        "steps_per_s": _BATCHES.value / elapsed,
    }


def main(argv: list[str]) -> None:
    del argv
    source = f"dataset={_DATASET.value}" if _DATASET.value else f"folder={_FOLDER.value}"
    print(f"{source} augmentation={_AUGMENTATION.value} items/batch={_ITEMS.value}")
    print(f"{'workers':>7} {'start-up s':>10} {'items/s':>9} {'samples/s':>10} {'steps/s':>8}")
    for workers in (int(w) for w in _WORKERS.value):
        r = measure(workers)
        print(
            f"{workers:>7} {r['startup_s']:>10.1f} {r['items_per_s']:>9.1f} "
            f"{r['samples_per_s']:>10.1f} {r['steps_per_s']:>8.2f}"
        )


if __name__ == "__main__":
    app.run(main)
