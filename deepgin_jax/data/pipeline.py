"""The Grain training input pipeline (spec 5.4): images with K masks each, sharded per process.

    source -> shard (process p of n) -> shuffle(seed) -> repeat -> decode+augment+masks
           -> batch (B items -> B*K samples) -> iterator [-> mp_prefetch workers]

Each batch is `{"image": uint8 [B*K, S, S, 3], "mask": uint8 [B*K, S, S, 1] in {0, 1}}` with
B = items_per_batch // process_count, K = len(mask_types), S = crop_size; each item's K samples
are consecutive, share the ground truth and carry masks in `mask_types` order. The iterator is
deterministic by seed and its position can be saved and restored (`get_state`/`set_state`, or
`grain.checkpoint.CheckpointSave/CheckpointRestore` inside an Orbax `CheckpointManager`).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from deepgin_jax import masks as masks_lib
from deepgin_jax.data import sources, transforms


def default_data_config() -> ml_collections.ConfigDict:
    """Every data key with its default (goes into the training configs as `config.data`)."""
    config = ml_collections.ConfigDict()
    # A prepared dataset (python -m deepgin_jax.data.prepare): "ade20k", "ade20k/aim2020",
    # "celebahq", "ffhq", "places2", "image_folder/<name>", or a prepared dataset folder.
    config.dataset = "ade20k"
    # If non-empty, images are read straight from this folder (recursive), no prepare step.
    config.folder = ""
    config.data_dir = ""  # TFDS data folder; "" = the TFDS default (~/tensorflow_datasets).
    config.split = "train"
    # Folder mode without train/ + test/ subfolders: share of images held out as "test".
    config.holdout_fraction = 0.0
    config.load_size = 512
    config.crop_size = 256
    # "reference" (spec 5.4: resize to load_size, rot90, polyphase 2x subsample, flip) or
    # "crops" (random square crop of crop_scale x the short side, resized, flip).
    config.augmentation = "reference"
    config.crop_scale = (0.5, 1.0)
    config.mask_types = ("rect", "ca", "freeform")  # one sample per type per item, this order
    # Free-form strokes in pixels at 256x256 (the reference; at 64x64 they cover ~97 % of the
    # image) or scaled by crop_size / 256, keeping their 256x256 hole ratio at any crop size.
    config.scale_strokes = False
    config.items_per_batch = 4  # images per step across all processes
    config.num_workers = 0  # Grain worker processes (0 = decode in the training process)
    config.num_threads = 4  # reader threads per process/worker
    config.prefetch_buffer = 4  # batches read ahead per process/worker
    config.seed = 0
    return config


def validate_data_config(config: ml_collections.ConfigDict, process_count: int = 1) -> None:
    """Raises ValueError naming the first bad value."""
    if config.augmentation not in transforms.AUGMENTATIONS:
        raise ValueError(
            f"data.augmentation={config.augmentation!r}; expected one of "
            f"{transforms.AUGMENTATIONS}."
        )
    if config.augmentation == "reference" and config.load_size != 2 * config.crop_size:
        raise ValueError(
            f"data.augmentation='reference' needs data.load_size == 2 * data.crop_size, got "
            f"load_size={config.load_size}, crop_size={config.crop_size}."
        )
    if config.crop_size < 1:
        raise ValueError(f"data.crop_size must be positive, got {config.crop_size}.")
    valid_kinds = (*masks_lib.MASK_TYPES, masks_lib.MIXED)
    if not config.mask_types or any(k not in valid_kinds for k in config.mask_types):
        raise ValueError(f"data.mask_types={config.mask_types!r}; each must be in {valid_kinds}.")
    if config.items_per_batch < 1 or config.items_per_batch % process_count:
        raise ValueError(
            f"data.items_per_batch={config.items_per_batch} must be a positive multiple of the "
            f"process count {process_count}."
        )
    if config.num_workers < 0 or config.num_threads < 0 or config.prefetch_buffer < 0:
        raise ValueError("data.num_workers, num_threads and prefetch_buffer must be >= 0.")
    if not config.folder and not config.dataset:
        raise ValueError("Set data.folder (a folder of images) or data.dataset (prepared).")


def open_records(config: ml_collections.ConfigDict) -> sources.RecordSource:
    """Random access to the split's encoded images: the folder, or the prepared TFDS dataset."""
    if config.folder:
        return sources.ImageFolderSource.from_folder(
            config.folder, config.split, holdout_fraction=config.holdout_fraction
        )
    from deepgin_jax.data import builders  # imports TFDS only when it is needed

    return builders.open_prepared_split(
        config.dataset, config.split, data_dir=config.data_dir or None
    )


def dataset_size(config: ml_collections.ConfigDict) -> int:
    """Number of images in the configured split (all processes together)."""
    return len(open_records(config))


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
    """Training steps per pass over the split: images // items_per_batch (remainder dropped)."""
    return dataset_size(config) // config.items_per_batch


def samples_per_batch(config: ml_collections.ConfigDict, process_count: int = 1) -> int:
    """Leading batch dimension each process receives: (items_per_batch // n) * len(mask_types)."""
    return (config.items_per_batch // process_count) * len(config.mask_types)


def _derived_seed(seed: int, process_index: int, stream: int) -> int:
    """An independent 32-bit seed per (config seed, process, use)."""
    return int(np.random.SeedSequence([seed, process_index, stream]).generate_state(1)[0])


def _process_layout(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count}).")
    return process_index, process_count


def create_train_dataset(
    config: ml_collections.ConfigDict,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
):
    """The infinite training `grain.IterDataset` of this process (see the module docstring).

    Process p of n reads the p-th of n equal contiguous slices of the split (the remainder
    images are dropped), so processes see disjoint images.
    """
    import grain

    process_index, process_count = _process_layout(process_index, process_count)
    validate_data_config(config, process_count)
    images = sources.DecodedImageSource(open_records(config))
    per_process = len(images) // process_count
    if per_process == 0:
        raise ValueError(f"{len(images)} images cannot be shared by {process_count} processes.")
    item_transform = transforms.InpaintingItemTransform(
        augmentation=config.augmentation,
        load_size=config.load_size,
        crop_size=config.crop_size,
        mask_types=tuple(config.mask_types),
        crop_scale=tuple(config.crop_scale),
        scale_strokes=config.scale_strokes,
    )
    start = process_index * per_process
    dataset = (
        grain.MapDataset.source(images)[start : start + per_process]
        .shuffle(seed=_derived_seed(config.seed, process_index, 0))
        .repeat(None)
        .random_map(item_transform, seed=_derived_seed(config.seed, process_index, 1))
        .batch(
            config.items_per_batch // process_count,
            drop_remainder=True,
            batch_fn=transforms.stack_items,
        )
    )
    iter_dataset = dataset.to_iter_dataset(
        grain.ReadOptions(
            num_threads=config.num_threads, prefetch_buffer_size=config.prefetch_buffer
        )
    )
    if config.num_workers > 0:
        iter_dataset = iter_dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=config.num_workers, per_worker_buffer_size=2)
        )
    return iter_dataset


def create_train_iterator(
    config: ml_collections.ConfigDict,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
):
    """An iterator over this process's training batches (a `grain.DatasetIterator`).

    Yields `{"image": uint8 [B*K, S, S, 3], "mask": uint8 [B*K, S, S, 1]}` forever; supports
    `get_state()`/`set_state()` and `grain.checkpoint.CheckpointSave/CheckpointRestore`.
    Process index/count default to `jax.process_index()`/`jax.process_count()`. With
    `num_workers > 0` the entry point must run under `absl.app.run` (Grain reads absl flags).
    """
    dataset = create_train_dataset(config, process_index=process_index, process_count=process_count)
    return iter(dataset)
