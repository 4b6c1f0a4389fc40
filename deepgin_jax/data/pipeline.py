"""The Grain training input pipeline (spec 5.4): images with K masks each, one sequence for
every layout.

    source -> shuffle(seed, per epoch) -> repeat -> decode+augment+masks(seed, item)  = item i
    step s -> items s*B .. s*B+B-1 -> this process's slots [+ weight-0 padding]
           -> iterator [-> mp_prefetch workers]

Each batch is `{"image": uint8 [n, S, S, 3], "mask": uint8 [n, S, S, 1] in {0, 1}}`, plus
`"weight": float32 [n]` (1 = real, 0 = padding) when the layout pads (`BatchLayout`); B =
items_per_batch, K = len(mask_types), S = crop_size, n = `BatchLayout.samples_per_process`
(B*K on one process and one device). Each item's K samples are consecutive, share the ground
truth and carry masks in `mask_types` order. The global batch of a step depends on the seed
and the step alone, never on the number of processes, devices or workers, so the iterator's
position is the step: a run resumes with `start_step` on any layout.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

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


def validate_data_config(config: ml_collections.ConfigDict) -> None:
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
    if config.items_per_batch < 1:
        raise ValueError(f"data.items_per_batch must be >= 1, got {config.items_per_batch}.")
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
    """Whole training steps per pass over the split: images // items_per_batch (the next
    epoch's first images complete the last batch of one)."""
    return dataset_size(config) // config.items_per_batch


def samples_per_batch(config: ml_collections.ConfigDict, process_count: int = 1) -> int:
    """Leading batch dimension each process receives (`BatchLayout.samples_per_process`, on
    one device per process)."""
    return BatchLayout.of(config, process_count, 1).samples_per_process


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """How one step's global batch is split over processes and devices.

    A step reads `items_per_batch` images (all processes together), each with `masks_per_item`
    masks. Each process reads ceil(items / processes) item slots; slots past the last image are
    padding. Its samples are then padded to a multiple of its device count. Padding samples are
    copies of real ones with weight 0, so the loss and its gradients are those of the real
    samples alone on any number of processes and devices.
    """

    items_per_batch: int
    masks_per_item: int
    process_count: int
    local_device_count: int

    @classmethod
    def of(
        cls, config: ml_collections.ConfigDict, process_count: int, local_device_count: int
    ) -> BatchLayout:
        return cls(
            config.items_per_batch, len(config.mask_types), process_count, local_device_count
        )

    @property
    def items_per_process(self) -> int:
        return -(-self.items_per_batch // self.process_count)

    @property
    def samples_per_process(self) -> int:
        samples = self.items_per_process * self.masks_per_item
        return -(-samples // self.local_device_count) * self.local_device_count

    @property
    def real_samples(self) -> int:
        """Samples per step that count: items_per_batch x masks_per_item."""
        return self.items_per_batch * self.masks_per_item

    @property
    def global_samples(self) -> int:
        """Samples per step including the padding: the leading dimension of the global arrays."""
        return self.samples_per_process * self.process_count

    @property
    def padded(self) -> bool:
        return self.global_samples != self.real_samples

    def describe(self) -> str:
        devices = self.process_count * self.local_device_count
        text = (
            f"global batch {self.items_per_batch} images x {self.masks_per_item} masks = "
            f"{self.real_samples} samples on {self.process_count} process(es) x "
            f"{self.local_device_count} device(s)"
        )
        if self.padded:
            text += (
                f", padded to {self.global_samples} ({self.global_samples - self.real_samples}"
                " samples of weight 0)"
            )
        return f"{text}, {self.global_samples // devices} per device"


def _derived_seed(seed: int, stream: int) -> int:
    """An independent 32-bit seed per (config seed, use). (The 0 is the process index of the
    per-process seeds this replaced, so a one-process run reads the batches it read before.)"""
    return int(np.random.SeedSequence([seed, 0, stream]).generate_state(1)[0])


def _process_layout(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count}).")
    return process_index, process_count


def global_items(config: ml_collections.ConfigDict):
    """Every process's view of the one training sequence: item i (the i-th image read since
    the run began) as a `grain.MapDataset` of {"image", "mask"}. Epoch e = items e*N..e*N+N-1
    is a permutation of the N images seeded by (seed, e); each item's augmentation and masks
    are seeded by (seed, i). Nothing depends on the process, device or worker count."""
    import grain

    validate_data_config(config)
    images = sources.DecodedImageSource(open_records(config))
    if len(images) == 0:
        raise ValueError("the training split has no images.")
    item_transform = transforms.InpaintingItemTransform(
        augmentation=config.augmentation,
        load_size=config.load_size,
        crop_size=config.crop_size,
        mask_types=tuple(config.mask_types),
        crop_scale=tuple(config.crop_scale),
        scale_strokes=config.scale_strokes,
    )
    return (
        grain.MapDataset.source(images)
        .shuffle(seed=_derived_seed(config.seed, 0))
        .repeat(None)
        .random_map(item_transform, seed=_derived_seed(config.seed, 1))
    )


@dataclasses.dataclass(frozen=True)
class _LocalBatch:
    """Step -> this process's part of that step's global batch (picklable for Grain workers)."""

    items: Any
    layout: BatchLayout
    process_index: int

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        layout, first = self.layout, self.process_index * self.layout.items_per_process
        slots = range(first, first + layout.items_per_process)
        # A slot past the last image repeats one (weight 0): a finite, realistic sample.
        first_item = step * layout.items_per_batch
        batch = transforms.stack_items(
            [self.items[first_item + slot % layout.items_per_batch] for slot in slots]
        )
        if not layout.padded:
            return batch
        weight = np.repeat(
            np.asarray([slot < layout.items_per_batch for slot in slots], np.float32),
            layout.masks_per_item,
        )
        batch["weight"] = weight
        # Whole samples up to a multiple of the device count, again weight 0.
        order = np.arange(layout.samples_per_process) % len(weight)
        padded = {name: value[order] for name, value in batch.items()}
        padded["weight"][len(weight) :] = 0.0
        return padded


def create_train_dataset(
    config: ml_collections.ConfigDict,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    local_device_count: int = 1,
    start_step: int = 0,
):
    """This process's part of the training batches from `start_step` on, as an infinite
    `grain.IterDataset` (see the module docstring and `BatchLayout`).

    Step s's global batch is items s*B .. s*B+B-1 of `global_items` (B = items_per_batch);
    process p reads its slots of it. So the global batches depend on the seed and the step
    alone, a run resumes at any step on any layout, and every image is read once per epoch.
    """
    import grain

    process_index, process_count = _process_layout(process_index, process_count)
    validate_data_config(config)
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}.")
    layout = BatchLayout.of(config, process_count, local_device_count)
    local_batch = _LocalBatch(global_items(config), layout, process_index)
    dataset = grain.MapDataset.range(start_step, sys.maxsize).map(local_batch)
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
    local_device_count: int = 1,
    start_step: int = 0,
):
    """An iterator over this process's training batches (a `grain.DatasetIterator`).

    Yields `{"image": uint8 [B*K, S, S, 3], "mask": uint8 [B*K, S, S, 1]}` forever; supports
    `get_state()`/`set_state()` and `grain.checkpoint.CheckpointSave/CheckpointRestore`.
    Process index/count default to `jax.process_index()`/`jax.process_count()`. With
    `num_workers > 0` the entry point must run under `absl.app.run` (Grain reads absl flags).
    """
    dataset = create_train_dataset(
        config,
        process_index=process_index,
        process_count=process_count,
        local_device_count=local_device_count,
        start_step=start_step,
    )
    return iter(dataset)
