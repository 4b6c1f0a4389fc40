"""Dataset builders prepared from tiny fake downloads, read back without TensorFlow."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from deepgin_jax.data import builders, pipeline, prepare


def _jpeg(seed: int, size=(32, 32)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32), seed, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _read_split(name: str, split: str, data_dir) -> dict[str, bytes]:
    source = builders.open_prepared_split(name, split, data_dir=data_dir)
    records = [source[i] for i in range(len(source))]
    return {r["file_name"].decode(): r["image"] for r in records}


ADE_TRAIN = {f"ADE_train_{i:08d}.jpg": _jpeg(i) for i in range(1, 6)}
ADE_VAL = {f"ADE_val_{i:08d}.jpg": _jpeg(100 + i) for i in range(1, 3)}


def _ade_members() -> dict[str, bytes]:
    root = "ADEChallengeData2016"
    members = {f"{root}/images/training/{n}": d for n, d in ADE_TRAIN.items()}
    members.update({f"{root}/images/validation/{n}": d for n, d in ADE_VAL.items()})
    members.update({f"{root}/annotations/training/ADE_train_00000001.png": _png(1)})
    return members


@pytest.fixture
def ade_zip_dir(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    with zipfile.ZipFile(manual / "ADEChallengeData2016.zip", "w") as archive:
        for name, data in _ade_members().items():
            archive.writestr(name, data)
    return manual


def test_ade20k_official_split_from_zip_keeps_original_bytes(ade_zip_dir, tmp_path):
    data_dir = tmp_path / "tfds"
    name, prepared, counts = prepare.prepare_dataset("ade20k", ade_zip_dir, data_dir=data_dir)
    assert name == "ade20k/official" and counts == {"train": 5, "validation": 2}
    assert (prepared / "dataset_info.json").is_file()
    train = _read_split("ade20k", "train", data_dir)
    assert {n.rsplit("/", 1)[-1]: d for n, d in train.items()} == ADE_TRAIN
    validation = _read_split("ade20k/official", "validation", data_dir)
    assert sorted(n.rsplit("/", 1)[-1] for n in validation) == sorted(ADE_VAL)


def test_ade20k_aim_list_from_extracted_folder(tmp_path):
    manual = tmp_path / "manual"
    for name, data in _ade_members().items():
        (manual / name).parent.mkdir(parents=True, exist_ok=True)
        (manual / name).write_bytes(data)
    aim_list = tmp_path / "new_image_names.txt"
    aim_list.write_text("ADE_train_00000002.jpg\nADE_train_00000004\nADE_train_09999999.jpg\n")
    data_dir = tmp_path / "tfds"
    name, _, counts = prepare.prepare_dataset(
        "ade20k", manual, data_dir=data_dir, aim_list=aim_list
    )
    assert name == "ade20k/aim2020" and counts == {"train": 2, "validation": 2}
    train = _read_split("ade20k/aim2020", "train", data_dir)
    assert sorted(n.rsplit("/", 1)[-1] for n in train) == [
        "ADE_train_00000002.jpg",
        "ADE_train_00000004.jpg",
    ]


def test_ade20k_missing_download_says_what_to_put_where(tmp_path):
    manual = tmp_path / "downloads"
    manual.mkdir()
    (manual / "ADE20K_2021_17_01.zip").write_bytes(b"the wrong release")
    with pytest.raises(builders.MissingDownloadError, match=r"downloads/ADEChallengeData2016\.zip"):
        prepare.prepare_dataset("ade20k", manual, data_dir=tmp_path / "tfds")
    with pytest.raises(
        builders.MissingDownloadError, match=r"(?s)missing or empty.*absent/images1024x1024"
    ):
        prepare.prepare_dataset("ffhq", tmp_path / "absent", data_dir=tmp_path / "tfds")


def test_image_folder_with_holdout_then_pipeline(tmp_path):
    folder = tmp_path / "My Photos"
    (folder / "sub").mkdir(parents=True)
    files = {f"p{i}.jpg": _jpeg(i, (40, 24)) for i in range(10)}
    files["sub/gray.png"] = _png(9)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / ".hidden.jpg").write_bytes(b"ignored")
    data_dir = tmp_path / "tfds"
    name, _, counts = prepare.prepare_dataset(
        "image_folder", folder, data_dir=data_dir, holdout_fraction=0.3
    )
    assert name == "image_folder/my_photos"
    assert counts["train"] + counts["test"] == 11 and counts["test"] > 0
    merged = _read_split(name, "train", data_dir) | _read_split(name, "test", data_dir)
    assert merged == files

    config = pipeline.default_data_config()
    config.dataset, config.data_dir = name, str(data_dir)
    config.load_size, config.crop_size, config.items_per_batch = 32, 16, 2
    assert pipeline.dataset_size(config) == counts["train"]
    batch = next(pipeline.create_train_iterator(config, process_index=0, process_count=1))
    assert batch["image"].shape == (6, 16, 16, 3) and batch["mask"].shape == (6, 16, 16, 1)


def test_image_folder_train_test_layout(tmp_path):
    folder = tmp_path / "layout"
    for split, count in (("train", 3), ("test", 2)):
        (folder / split).mkdir(parents=True)
        for i in range(count):
            (folder / split / f"{i}.jpg").write_bytes(_jpeg(i))
    _, _, counts = prepare.prepare_dataset("image_folder", folder, data_dir=tmp_path / "tfds")
    assert counts == {"train": 3, "test": 2}


def test_celebahq_and_ffhq_split_by_index(tmp_path):
    manual = tmp_path / "manual"
    (manual / "CelebAMask-HQ" / "CelebA-HQ-img").mkdir(parents=True)
    for index in (0, 1, 27999, 28000, 29999):
        (manual / "CelebAMask-HQ" / "CelebA-HQ-img" / f"{index}.jpg").write_bytes(_jpeg(index))
    with zipfile.ZipFile(manual / "images1024x1024.zip", "w") as archive:
        for index in (5, 59999, 60000):
            archive.writestr(f"images1024x1024/{index // 1000 * 1000:05d}/{index:05d}.png", _png(3))
    data_dir = tmp_path / "tfds"
    _, _, counts = prepare.prepare_dataset("celebahq", manual, data_dir=data_dir)
    assert counts == {"train": 3, "test": 2}
    _, _, counts = prepare.prepare_dataset("ffhq", manual, data_dir=data_dir)
    assert counts == {"train": 2, "test": 1}
    assert any(n.endswith("60000.png") for n in _read_split("ffhq", "test", data_dir))


def test_places2_from_tars(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    for tar_name, members in (
        (
            "train_256_places365standard.tar",
            ["data_256/a/airfield/00000001.jpg", "data_256/b/bar/2.jpg"],
        ),
        ("val_256.tar", ["val_256/Places365_val_00000001.jpg"]),
    ):
        with tarfile.open(manual / tar_name, "w") as archive:
            for seed, member in enumerate(members):
                data = _jpeg(seed)
                info = tarfile.TarInfo(member)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    name, _, counts = prepare.prepare_dataset("places2", manual, data_dir=tmp_path / "tfds")
    assert name == "places2" and counts == {"train": 2, "validation": 1}


def test_unprepared_dataset_error_gives_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"deepgin_jax\.data\.prepare --dataset ade20k "):
        builders.open_prepared_split("ade20k", "train", data_dir=tmp_path)
    with pytest.raises(
        FileNotFoundError, match=r"(?s)--dataset ade20k/aim2020 --manual_dir.*new_image_names"
    ):
        builders.open_prepared_split("ade20k/aim2020", "train", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="not prepared"):
        builders.open_prepared_split("image_folder/nothing", "train", data_dir=tmp_path)
    with pytest.raises(ValueError, match="Unknown dataset"):
        builders.make_builder("coco")


def test_prepare_cli_builds_the_aim_split_with_the_list_in_the_manual_folder(ade_zip_dir, tmp_path):
    (ade_zip_dir / "new_image_names.txt").write_text("ADE_train_00000003.jpg\n")
    command = [
        sys.executable, "-m", "deepgin_jax.data.prepare", "--dataset", "ade20k/aim2020",
        "--manual_dir", str(ade_zip_dir), "--data_dir", str(tmp_path / "tfds"),
    ]  # fmt: skip
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    assert "config.data.dataset = 'ade20k/aim2020'" in result.stdout
    assert "train: 1" in result.stdout and "validation: 2" in result.stdout
    command[command.index("ade20k/aim2020")] = "ade20k/full"
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode != 0 and "ade20k/full" in result.stderr


def test_prepare_cli_prints_dataset_name(tmp_path):
    folder = tmp_path / "cats"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(_jpeg(i))
    command = [
        sys.executable, "-m", "deepgin_jax.data.prepare", "--dataset", "image_folder",
        "--manual_dir", str(folder), "--data_dir", str(tmp_path / "tfds"),
    ]  # fmt: skip
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    assert "config.data.dataset = 'image_folder/cats'" in result.stdout
    assert "train: 3" in result.stdout
