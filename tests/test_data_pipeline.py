"""The Grain training pipeline: batch layout, determinism, sharding, checkpointing, bad files."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from absl import flags
from PIL import ExifTags, Image

from deepgin_jax.data import pipeline, sample_image_paths, sources, transforms

NUM_COLOURS = 8


def _colour(index: int) -> tuple[int, int, int]:
    return (10 + 30 * index, 250 - 30 * index, 77)


@pytest.fixture
def colour_folder(tmp_path):
    """8 solid-colour PNGs of different sizes: a sample's colour tells which file it came from."""
    folder = tmp_path / "colours"
    folder.mkdir()
    for i in range(NUM_COLOURS):
        size = (20 + 3 * i, 28 - i)
        Image.new("RGB", size, _colour(i)).save(folder / f"img_{i}.png")
    return folder


def _config(folder, **overrides):
    config = pipeline.default_data_config()
    config.folder = str(folder)
    config.load_size, config.crop_size = 32, 16
    config.items_per_batch = 2
    config.update(overrides)
    return config


def _item_ids(batch: dict[str, np.ndarray], num_masks: int) -> list[int]:
    """The file index of each item of a batch of solid-colour images."""
    ids = []
    for first in range(0, batch["image"].shape[0], num_masks):
        colour = tuple(int(v) for v in batch["image"][first, 0, 0])
        ids.append([_colour(i) for i in range(NUM_COLOURS)].index(colour))
    return ids


def _batches_equal(a, b) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in ("image", "mask"))


def test_batch_layout_items_times_masks(colour_folder):
    config = _config(colour_folder)
    batch = next(pipeline.create_train_iterator(config, process_index=0, process_count=1))
    assert batch["image"].shape == (6, 16, 16, 3) and batch["image"].dtype == np.uint8
    assert batch["mask"].shape == (6, 16, 16, 1) and batch["mask"].dtype == np.uint8
    assert set(np.unique(batch["mask"])) <= {0, 1}
    assert pipeline.samples_per_batch(config) == 6
    # Each item's three samples share the ground truth; the first mask of each is the box.
    for first in (0, 3):
        for k in (1, 2):
            np.testing.assert_array_equal(batch["image"][first], batch["image"][first + k])
        box = batch["mask"][first, ..., 0]
        rows, cols = np.nonzero(box)
        assert box.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
    assert not np.array_equal(batch["image"][0], batch["image"][3])


def test_each_epoch_visits_every_image_once(colour_folder):
    iterator = pipeline.create_train_iterator(
        _config(colour_folder), process_index=0, process_count=1
    )
    epochs = [[i for _ in range(4) for i in _item_ids(next(iterator), 3)] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(NUM_COLOURS))
    assert epochs[0] != epochs[1]  # reshuffled


def test_same_seed_same_batches_other_seed_differs(colour_folder):
    def first_batches(seed):
        config = _config(colour_folder, seed=seed)
        iterator = pipeline.create_train_iterator(config, process_index=0, process_count=1)
        return [next(iterator) for _ in range(3)]

    run_a, run_b, other = first_batches(1), first_batches(1), first_batches(2)
    assert all(_batches_equal(a, b) for a, b in zip(run_a, run_b, strict=True))
    assert not all(_batches_equal(a, c) for a, c in zip(run_a, other, strict=True))


def test_processes_read_disjoint_parts_of_each_global_batch(colour_folder):
    config = _config(colour_folder, items_per_batch=4, mask_types=("rect", "ca"))
    seen = []
    for process in range(2):
        iterator = pipeline.create_train_iterator(config, process_index=process, process_count=2)
        batches = [next(iterator) for _ in range(2)]  # one epoch: 2 steps of 4 images
        assert batches[0]["image"].shape[0] == (4 // 2) * 2 == pipeline.samples_per_batch(config, 2)
        assert "weight" not in batches[0]  # 4 images split over 2 processes: no padding
        seen.append({i for batch in batches for i in _item_ids(batch, 2)})
    assert seen[0].isdisjoint(seen[1])
    assert seen[0] | seen[1] == set(range(NUM_COLOURS))


def _global_batches(config, process_count: int, local_devices: int, steps: int, start: int = 0):
    """Each step's samples of weight 1, all processes' parts in process order."""
    iterators = [
        pipeline.create_train_iterator(
            config,
            process_index=p,
            process_count=process_count,
            local_device_count=local_devices,
            start_step=start,
        )
        for p in range(process_count)
    ]
    layout = pipeline.BatchLayout.of(config, process_count, local_devices)
    batches = []
    for _ in range(steps):
        parts = [next(it) for it in iterators]
        for part in parts:
            assert part["image"].shape[0] == layout.samples_per_process
            assert part["image"].shape[0] % local_devices == 0
            assert ("weight" in part) == layout.padded
        whole = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
        assert whole["image"].shape[0] == layout.global_samples
        keep = whole.pop("weight", np.ones(layout.global_samples)) > 0
        assert keep.sum() == layout.real_samples
        batches.append({k: v[keep] for k, v in whole.items()})
    return batches


@pytest.mark.parametrize(("processes", "devices"), [(2, 1), (2, 2), (3, 1), (1, 8), (4, 2), (8, 2)])
def test_global_batches_do_not_depend_on_processes_or_devices(colour_folder, processes, devices):
    """The paper's 4 images x 3 masks on any layout: the same samples as on one device, padded
    with weight-0 copies where 12 does not split."""
    config = _config(colour_folder, items_per_batch=4)
    expected = _global_batches(config, 1, 1, steps=3)
    for got, want in zip(
        _global_batches(config, processes, devices, steps=3), expected, strict=True
    ):
        assert _batches_equal(got, want)


def test_a_run_restarts_at_any_step(colour_folder):
    config = _config(colour_folder, items_per_batch=3)
    expected = _global_batches(config, 1, 1, steps=5)[3:]
    assert all(
        _batches_equal(got, want)
        for got, want in zip(_global_batches(config, 2, 2, steps=2, start=3), expected, strict=True)
    )


def test_each_image_once_per_epoch_when_the_batch_does_not_divide_it(colour_folder):
    batches = _global_batches(_config(colour_folder, items_per_batch=3), 1, 1, steps=6)
    items = [i for batch in batches for i in _item_ids(batch, 3)]  # 18 items, 2.25 epochs
    assert sorted(items[:8]) == sorted(items[8:16]) == list(range(NUM_COLOURS))
    assert items[:8] != items[8:16]


def test_get_state_set_state_resumes_exactly(colour_folder):
    config = _config(colour_folder)
    iterator = pipeline.create_train_iterator(config, process_index=0, process_count=1)
    for _ in range(3):
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(3)]
    resumed = pipeline.create_train_iterator(config, process_index=0, process_count=1)
    resumed.set_state(state)
    for want in expected:
        assert _batches_equal(next(resumed), want)


def test_dataset_size_steps_per_epoch_and_holdout(colour_folder):
    config = _config(colour_folder, items_per_batch=3)
    assert pipeline.dataset_size(config) == NUM_COLOURS
    assert pipeline.steps_per_epoch(config) == NUM_COLOURS // 3
    config.holdout_fraction = 0.5
    train = pipeline.dataset_size(config)
    config.split = "test"
    assert train + pipeline.dataset_size(config) == NUM_COLOURS


def test_bad_config_values_are_named(colour_folder):
    with pytest.raises(ValueError, match=r"load_size == 2 \* data\.crop_size"):
        pipeline.validate_data_config(_config(colour_folder, load_size=40))
    with pytest.raises(ValueError, match="mask_types"):
        pipeline.validate_data_config(_config(colour_folder, mask_types=("rect", "blob")))
    with pytest.raises(ValueError, match="items_per_batch must be >= 1"):
        pipeline.validate_data_config(_config(colour_folder, items_per_batch=0))
    with pytest.raises(ValueError, match="augmentation"):
        pipeline.validate_data_config(_config(colour_folder, augmentation="jitter"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        pipeline.dataset_size(_config(colour_folder.parent / "nowhere"))


# --- awkward files ---------------------------------------------------------------------------


@pytest.fixture
def awkward_folder(tmp_path):
    """Readable files in every awkward format plus two unreadable ones."""
    folder = tmp_path / "awkward"
    folder.mkdir()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "a_rgb.jpg")
    Image.fromarray(pixels[..., 0]).save(folder / "b_gray.png")
    Image.fromarray(np.dstack([pixels, pixels[..., :1]]), "RGBA").save(folder / "c_rgba.png")
    Image.fromarray(pixels).convert("CMYK").save(folder / "d_cmyk.jpg")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    (folder / "e_cut.jpg").write_bytes(buffer.getvalue()[:300])
    Image.fromarray(pixels[..., 1].astype(np.uint16) * 257).save(folder / "f_gray16.png")
    (folder / "g_notes.png").write_text("not an image")
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 8
    Image.fromarray(pixels).save(folder / "h_rotated.jpg", exif=exif)
    return folder


def test_decoded_source_converts_formats_and_replaces_unreadable(awkward_folder, caplog):
    records = sources.ImageFolderSource.from_folder(awkward_folder)
    names = [records[i]["file_name"] for i in range(len(records))]
    assert names[4] == "e_cut.jpg" and names[6] == "g_notes.png"
    decoded = sources.DecodedImageSource(records)
    with caplog.at_level(logging.WARNING):
        images = [decoded[i] for i in range(len(decoded))]
    for image in images:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
    assert images[7].shape == (30, 24, 3)  # EXIF orientation applied
    np.testing.assert_array_equal(images[4], images[5])  # cut.jpg -> next readable file
    np.testing.assert_array_equal(images[6], images[7])  # notes.png -> next readable file
    assert decoded.num_unreadable == 2
    warnings = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warnings) == 2 and "e_cut.jpg" in warnings[0] and "2 unreadable" in warnings[1]


def test_pipeline_runs_through_bad_files(awkward_folder):
    config = _config(awkward_folder, augmentation="crops", items_per_batch=4)
    iterator = pipeline.create_train_iterator(config, process_index=0, process_count=1)
    for _ in range(5):  # 2.5 epochs of 8 files
        batch = next(iterator)
        assert batch["image"].shape == (12, 16, 16, 3)


def test_all_unreadable_is_an_error(tmp_path):
    (tmp_path / "x.png").write_text("nope")
    decoded = sources.DecodedImageSource(sources.ImageFolderSource.from_folder(tmp_path))
    with pytest.raises(RuntimeError, match="None of the 1 records"):
        decoded[0]


# --- augmentations ---------------------------------------------------------------------------


def test_reference_augment_is_resize_rotate_polyphase():
    image = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    out = transforms.reference_augment(image, np.random.default_rng(7), load_size=32, crop_size=16)
    rng = np.random.default_rng(7)
    resized = np.asarray(Image.fromarray(image).resize((32, 32), Image.Resampling.BICUBIC))
    rotated = np.rot90(resized, k=int(rng.integers(0, 4)))
    row, col = transforms.POLYPHASE_OFFSETS[int(rng.integers(0, 4))]
    np.testing.assert_array_equal(out, rotated[row::2, col::2])
    assert out.shape == (16, 16, 3)


def test_polyphase_offsets_cover_every_pixel_once():
    image = np.arange(8 * 8).reshape(8, 8, 1)
    phases = [transforms.polyphase_subsample(image, o) for o in transforms.POLYPHASE_OFFSETS]
    assert sorted(np.concatenate([p.ravel() for p in phases]).tolist()) == list(range(64))
    np.testing.assert_array_equal(phases[2], image[1::2, 0::2])


def test_random_crop_augment_non_square_and_scale_bounds():
    image = np.random.default_rng(0).integers(0, 256, (40, 90, 3), dtype=np.uint8)
    rng = np.random.default_rng(1)
    for _ in range(20):
        assert transforms.random_crop_augment(image, rng, crop_size=24).shape == (24, 24, 3)
    full = transforms.random_crop_augment(image, rng, crop_size=40, crop_scale=(1.0, 1.0))
    assert any(np.array_equal(full, image[:, x : x + 40]) for x in range(51))
    with pytest.raises(ValueError, match="crop_scale"):
        transforms.random_crop_augment(image, rng, crop_size=8, crop_scale=(0.0, 1.0))


def test_flip_is_shared_by_image_and_masks():
    image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    item_masks = np.zeros((3, 4, 4, 1), np.uint8)
    item_masks[:, :, 0] = 1
    flipped = 0
    for seed in range(20):
        out_image, out_masks = transforms.shared_horizontal_flip(
            np.random.default_rng(seed), image, item_masks
        )
        was_flipped = not np.array_equal(out_image, image)
        np.testing.assert_array_equal(out_image, image[:, ::-1] if was_flipped else image)
        assert (out_masks[:, :, -1 if was_flipped else 0] == 1).all()
        flipped += was_flipped
    assert 0 < flipped < 20


def test_stack_items_orders_samples_item_major():
    items = [
        {
            "image": np.full((2, 2, 3), i, np.uint8),
            "mask": np.arange(3).reshape(3, 1, 1, 1) + 10 * i,
        }
        for i in range(2)
    ]
    batch = transforms.stack_items(items)
    assert batch["image"][:, 0, 0, 0].tolist() == [0, 0, 0, 1, 1, 1]
    assert batch["mask"][:, 0, 0, 0].tolist() == [0, 1, 2, 10, 11, 12]


def test_bundled_samples_train_with_crops():
    paths = sample_image_paths()
    assert 6 <= len(paths) <= 8
    sizes = {Image.open(p).size for p in paths}
    assert any(w != h for w, h in sizes) and all(256 <= min(s) <= 384 for s in sizes)
    config = pipeline.default_data_config()
    config.folder = str(paths[0].parent)
    config.augmentation, config.crop_size, config.items_per_batch = "crops", 64, 2
    batch = next(pipeline.create_train_iterator(config, process_index=0, process_count=1))
    assert batch["image"].shape == (6, 64, 64, 3)


def test_two_workers_match_in_process_batches(colour_folder):
    config = _config(colour_folder, seed=3)
    in_process = pipeline.create_train_iterator(config, process_index=0, process_count=1)
    expected = [next(in_process) for _ in range(3)]
    marked = not flags.FLAGS.is_parsed()
    if marked:
        flags.FLAGS.mark_as_parsed()  # Grain's workers read absl flags
    try:
        config.num_workers = 2
        workers = pipeline.create_train_iterator(config, process_index=0, process_count=1)
        for want in expected:
            assert _batches_equal(next(workers), want)
        del workers
    finally:
        if marked:
            flags.FLAGS.unparse_flags()
