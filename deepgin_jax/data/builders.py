"""TFDS dataset builders for images the user has already downloaded (no TensorFlow needed).

Every builder reads a `manual_dir` holding the dataset's archive or extracted folder, stores
each image's original encoded bytes (no re-encoding) with its file name, and writes
`array_record` files that `open_prepared_split` reads back with `tfds.data_source`. Features:
`{"image": tfds.features.Image (encoded bytes), "file_name": text}`; the input pipeline
decodes the bytes itself with `deepgin_jax.image_io`, which handles every pixel format.

Datasets, what their manual folder holds (any one of the names), and their splits:
* `ade20k`: `ADEChallengeData2016.zip` or `ADEChallengeData2016/`; train, validation.
* `celebahq`: `CelebAMask-HQ.zip`, `CelebAMask-HQ/`, `CelebA-HQ-img/`, ...; train, test.
* `ffhq`: `images1024x1024/`, `images1024x1024.zip`, `thumbnails128x128/`, ...; train, test.
* `places2`: `train_256_places365standard.tar` + `val_256.tar` (or their folders, or the
  `*_large*` versions); train, validation.
* `image_folder`: any images (recursive), with a `train/` + `test/` layout or a hash hold-out;
  train[, test].

`ade20k` has two configs: `official` (the 20,210 / 2,000 challenge split) and `aim2020`
(train restricted to the AIM-2020 list of training images, validation unchanged).
Prepare with `python -m deepgin_jax.data.prepare` or `prepare_dataset`.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from deepgin_jax.data import sources

_VERSION = tfds.core.Version("1.0.0")
_FEATURES_DOC = "image: the original encoded file; file_name: its path inside the download."


class MissingDownloadError(FileNotFoundError):
    """The files a builder needs are not in `manual_dir`; the message says what to put where."""


def _features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {"image": tfds.features.Image(shape=(None, None, 3)), "file_name": tfds.features.Text()}
    )


def _find_first(manual_dir: Path, candidates: Sequence[str]) -> Path | None:
    for name in candidates:
        if (manual_dir / name).exists():
            return manual_dir / name
    return None


def _require(manual_dir: Path, candidates: Sequence[str], dataset: str, where: str) -> Path:
    found = _find_first(manual_dir, candidates)
    if found is None:
        options = "\n".join(f"  {manual_dir / name}" for name in candidates)
        raise MissingDownloadError(
            f"{dataset}: none of the expected downloads is in the manual folder {manual_dir}.\n"
            f"Put one of these there:\n{options}\n({where})"
        )
    return found


def _member_images(path: Path, subfolder: str | None) -> Iterator[tuple[str, bytes]]:
    """Images of a folder/zip/tar, restricted to those under a `subfolder` path component."""
    if path.is_dir() and subfolder:
        sub = path / subfolder
        if sub.is_dir():
            for name, data in sources.iter_archive_images(sub):
                yield f"{subfolder}/{name}", data
        return
    for name, data in sources.iter_archive_images(path):
        if subfolder is None or f"/{subfolder}/" in f"/{name}":
            yield name, data


def _trailing_number(name: str) -> int | None:
    match = re.search(r"(\d+)$", PurePosixPath(name).stem)
    return int(match.group(1)) if match else None


def _examples(items: Iterator[tuple[str, bytes]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, data in items:
        yield name, {"image": data, "file_name": name}


class _ManualImageBuilder(tfds.core.GeneratorBasedBuilder):
    """Shared parts: features, info, and split generation from `locate_inputs`."""

    VERSION = _VERSION
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Original encoded images and their file names."
    }
    HOMEPAGE = ""
    CITATION = ""
    DESCRIPTION = ""
    CANDIDATES: tuple[str, ...] = ()  # what the manual folder may hold (any one of them)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's own lookup imports the `importlib_resources` backport, which it does not
        # declare as a dependency on Python >= 3.9; the file of the class is all it needs.
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.DESCRIPTION}\n{_FEATURES_DOC}",
            features=_features(),
            homepage=self.HOMEPAGE or None,
            citation=self.CITATION or None,
        )

    @classmethod
    def expected_downloads(cls, manual_dir: Path) -> str:
        """What to put where, for error messages."""
        options = "\n".join(f"  {manual_dir / name}" for name in cls.CANDIDATES)
        return f"Put one of these there:\n{options}\n({cls.MANUAL_DOWNLOAD_INSTRUCTIONS})"

    def locate_inputs(self, manual_dir: Path) -> dict[str, tuple]:
        """Split name -> arguments of `_generate_examples`; raises if something is missing."""
        raise NotImplementedError

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        inputs = self.locate_inputs(Path(os.fspath(dl_manager.manual_dir)))
        return {split: self._generate_examples(*args) for split, args in inputs.items()}


# ---------------------------------------------------------------------------------------------
# ADE20K (SceneParsing / ADEChallengeData2016)


@dataclasses.dataclass
class Ade20kConfig(tfds.core.BuilderConfig):
    """`use_aim_list`: restrict train to the AIM-2020 list of training image names."""

    use_aim_list: bool = False


AIM_LIST_NAMES = ("new_image_names.txt", "aim2020_train_list.txt")


def read_name_list(path: str | os.PathLike) -> set[str]:
    """Image stems from a list file: one name per line, with or without folder/extension."""
    names = set()
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.add(PurePosixPath(line.replace("\\", "/")).stem)
    if not names:
        raise ValueError(f"Image list {path} names no images.")
    return names


class Ade20k(_ManualImageBuilder):
    """ADE20K scene-parsing images (the AIM-2020 inpainting data, spec 5.3)."""

    name = "ade20k"
    BUILDER_CONFIGS = [  # noqa: RUF012 (TFDS reads this class attribute)
        Ade20kConfig(name="official", description="Official 20,210 train / 2,000 validation."),
        Ade20kConfig(
            name="aim2020",
            description="Train limited to the AIM-2020 list (10,330 images); validation as is.",
            use_aim_list=True,
        ),
    ]
    DEFAULT_CONFIG_NAME = "official"
    DESCRIPTION = "ADE20K scene parsing images (ADEChallengeData2016), images only."
    HOMEPAGE = "http://sceneparsing.csail.mit.edu/"
    CITATION = "Zhou et al., Scene Parsing through ADE20K Dataset, CVPR 2017."
    CANDIDATES = ("ADEChallengeData2016.zip", "ADEChallengeData2016")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download ADEChallengeData2016.zip from http://sceneparsing.csail.mit.edu/ and put the "
        "zip (or the folder it extracts to) in the manual folder. For the aim2020 config also "
        "give the AIM-2020 list of training image names (--aim_list, or new_image_names.txt in "
        "the manual folder)."
    )

    def __init__(self, *, aim_list: str | os.PathLike | None = None, **kwargs: Any):
        self._aim_list = aim_list
        super().__init__(**kwargs)

    def _source(self, manual_dir: Path) -> Path:
        if (manual_dir / "images" / "training").is_dir():
            return manual_dir  # the manual folder is the extracted dataset itself
        return _require(manual_dir, self.CANDIDATES, self.name, self.MANUAL_DOWNLOAD_INSTRUCTIONS)

    def _aim_names(self, manual_dir: Path) -> set[str] | None:
        if not self.builder_config.use_aim_list:
            return None
        path = Path(self._aim_list) if self._aim_list else _find_first(manual_dir, AIM_LIST_NAMES)
        if path is None or not path.is_file():
            raise MissingDownloadError(
                f"ade20k/aim2020 needs the AIM-2020 list of training images: pass --aim_list "
                f"FILE or put one of {list(AIM_LIST_NAMES)} in {manual_dir}"
                + (f" ({path} does not exist)." if path else ".")
            )
        return read_name_list(path)

    def locate_inputs(self, manual_dir: Path) -> dict[str, tuple]:
        source = self._source(manual_dir)
        return {
            "train": (source, "images/training", self._aim_names(manual_dir)),
            "validation": (source, "images/validation", None),
        }

    def _generate_examples(
        self, source: Path, subfolder: str, keep: set[str] | None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        items = _member_images(source, subfolder)
        if keep is not None:
            items = _filter_listed(items, keep, source)
        yield from _examples(items)


def _filter_listed(
    items: Iterator[tuple[str, bytes]], keep: set[str], source: Path
) -> Iterator[tuple[str, bytes]]:
    found = set()
    for name, data in items:
        stem = PurePosixPath(name).stem
        if stem in keep:
            found.add(stem)
            yield name, data
    if not found:
        raise ValueError(f"None of the {len(keep)} listed images is in {source}.")
    if len(found) < len(keep):
        logging.warning(
            "%d of the %d listed images are not in %s; using the %d found.",
            len(keep) - len(found),
            len(keep),
            source,
            len(found),
        )


# ---------------------------------------------------------------------------------------------
# Face datasets: CelebA-HQ and FFHQ, split by the number in the file name.


class _NumberedFacesBuilder(_ManualImageBuilder):
    """Images named by an index; index < NUM_TRAIN -> train, the rest -> test."""

    NUM_TRAIN = 0

    def locate_inputs(self, manual_dir: Path) -> dict[str, tuple]:
        source = _require(manual_dir, self.CANDIDATES, self.name, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        return {
            "train": (source, lambda n: n < self.NUM_TRAIN),
            "test": (source, lambda n: n >= self.NUM_TRAIN),
        }

    def _generate_examples(
        self, source: Path, in_split: Callable[[int], bool]
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        for name, data in sources.iter_archive_images(source):
            number = _trailing_number(name)
            if number is None:
                logging.warning("%s: %s has no index in its name; skipped.", self.name, name)
            elif in_split(number):
                yield name, {"image": data, "file_name": name}


class Celebahq(_NumberedFacesBuilder):
    """CelebA-HQ 1024x1024 faces: images 0-27,999 train, 28,000-29,999 test."""

    name = "celebahq"
    NUM_TRAIN = 28_000
    DESCRIPTION = "CelebA-HQ faces (30,000 images); train = index < 28,000, test = the rest."
    HOMEPAGE = "https://github.com/switchablenorms/CelebAMask-HQ"
    CITATION = "Karras et al., Progressive Growing of GANs, ICLR 2018."
    CANDIDATES = (
        "CelebAMask-HQ.zip",
        "CelebAMask-HQ/CelebA-HQ-img",
        "CelebA-HQ-img",
        "celeba_hq",
        "celeba-hq",
        "data1024x1024",
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download CelebAMask-HQ.zip (https://github.com/switchablenorms/CelebAMask-HQ) and put "
        "it, or its extracted CelebAMask-HQ/ folder, in the manual folder; a folder of the "
        "30,000 images named by index (CelebA-HQ-img/, celeba_hq/, data1024x1024/) also works."
    )


class Ffhq(_NumberedFacesBuilder):
    """FFHQ faces: images 0-59,999 train, 60,000-69,999 test."""

    name = "ffhq"
    NUM_TRAIN = 60_000
    DESCRIPTION = "Flickr-Faces-HQ (70,000 images); train = index < 60,000, test = the rest."
    HOMEPAGE = "https://github.com/NVlabs/ffhq-dataset"
    CITATION = "Karras et al., A Style-Based Generator Architecture for GANs, CVPR 2019."
    CANDIDATES = (
        "images1024x1024",
        "images1024x1024.zip",
        "ffhq",
        "ffhq.zip",
        "thumbnails128x128",
        "thumbnails128x128.zip",
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download FFHQ (https://github.com/NVlabs/ffhq-dataset) and put images1024x1024/ (or "
        "images1024x1024.zip, or thumbnails128x128/) in the manual folder."
    )


# ---------------------------------------------------------------------------------------------
# Places2 (Places365-Standard)


class Places2(_ManualImageBuilder):
    """Places365-Standard scenes: the official train and validation sets."""

    name = "places2"
    DESCRIPTION = "Places365-Standard (Places2) train and validation images."
    HOMEPAGE = "http://places2.csail.mit.edu/"
    CITATION = "Zhou et al., Places: A 10 Million Image Database for Scene Recognition, TPAMI 2017."
    TRAIN_CANDIDATES = (
        "train_256_places365standard.tar",
        "data_256",
        "train_large_places365standard.tar",
        "data_large",
    )
    VALIDATION_CANDIDATES = ("val_256.tar", "val_256", "val_large.tar", "val_large")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download Places365-Standard from http://places2.csail.mit.edu/download.html: "
        "train_256_places365standard.tar and val_256.tar (or the high-resolution "
        "train_large_places365standard.tar and val_large.tar), and put the tar files or their "
        "extracted data_256/ and val_256/ folders in the manual folder."
    )

    @classmethod
    def expected_downloads(cls, manual_dir: Path) -> str:
        train = "\n".join(f"  {manual_dir / name}" for name in cls.TRAIN_CANDIDATES)
        validation = "\n".join(f"  {manual_dir / name}" for name in cls.VALIDATION_CANDIDATES)
        return (
            f"Put one of these there:\n{train}\nand one of these:\n{validation}\n"
            f"({cls.MANUAL_DOWNLOAD_INSTRUCTIONS})"
        )

    def locate_inputs(self, manual_dir: Path) -> dict[str, tuple]:
        where = self.MANUAL_DOWNLOAD_INSTRUCTIONS
        return {
            "train": (_require(manual_dir, self.TRAIN_CANDIDATES, self.name, where),),
            "validation": (_require(manual_dir, self.VALIDATION_CANDIDATES, self.name, where),),
        }

    def _generate_examples(self, source: Path) -> Iterator[tuple[str, dict[str, Any]]]:
        yield from _examples(sources.iter_archive_images(source))


# ---------------------------------------------------------------------------------------------
# Any folder of images


@dataclasses.dataclass
class ImageFolderConfig(tfds.core.BuilderConfig):
    """`holdout_fraction`: share of images (by file-name hash) held out as "test" when the
    folder has no train/ + test/ layout."""

    holdout_fraction: float = 0.0


def folder_config_name(folder: str | os.PathLike) -> str:
    """A TFDS config name from a folder's name: lower case, [a-z0-9_] only."""
    name = re.sub(r"[^a-z0-9_]+", "_", Path(os.fspath(folder)).resolve().name.lower()).strip("_")
    return name or "images"


class ImageFolder(_ManualImageBuilder):
    """Any folder of images (recursive). Config name = the folder's name, e.g. `image_folder/cats`.

    A folder with `train/` and `test/` (or `validation/`) subfolders keeps that split;
    otherwise `holdout_fraction` of the images (chosen by a hash of the relative path) form
    "test" and the rest "train".
    """

    name = "image_folder"
    DESCRIPTION = "A user's folder of images."
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the folder of images as the manual folder."

    @classmethod
    def expected_downloads(cls, manual_dir: Path) -> str:
        return f"Put image files ({', '.join(sorted(sources.IMAGE_EXTENSIONS))}) in {manual_dir}."

    def locate_inputs(self, manual_dir: Path) -> dict[str, tuple]:
        folder = manual_dir
        fraction = getattr(self.builder_config, "holdout_fraction", 0.0)
        if sources.has_split_layout(folder):
            splits = [
                split
                for split in ("train", "test", "validation")
                if sources.find_split_folder(folder, split)
            ]
        else:
            splits = ["train", "test"] if fraction > 0 else ["train"]
        return {
            split: (sources.split_image_files(folder, split, holdout_fraction=fraction), folder)
            for split in splits
        }

    def _generate_examples(
        self, files: Sequence[Path], folder: Path
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        for path in files:
            name = path.relative_to(folder).as_posix()
            yield name, {"image": path.read_bytes(), "file_name": name}


BUILDERS: dict[str, type[_ManualImageBuilder]] = {
    b.name: b for b in (Ade20k, Celebahq, Ffhq, Places2, ImageFolder)
}


# ---------------------------------------------------------------------------------------------
# Preparing and reading


def make_builder(
    dataset: str,
    *,
    data_dir: str | os.PathLike | None = None,
    aim_list: str | os.PathLike | None = None,
    folder_name: str | None = None,
    holdout_fraction: float = 0.0,
    manual_dir: str | os.PathLike | None = None,
) -> _ManualImageBuilder:
    """The builder for `dataset` ("ade20k", "celebahq", "ffhq", "places2" or "image_folder").

    `aim_list` selects `ade20k/aim2020`; `image_folder` takes its config name from
    `folder_name` or the name of `manual_dir`, and `holdout_fraction`.
    """
    base_name, _, config = dataset.partition("/")
    if base_name not in BUILDERS:
        raise ValueError(f"Unknown dataset {dataset!r}; expected one of {sorted(BUILDERS)}.")
    kwargs: dict[str, Any] = {
        "data_dir": os.fspath(data_dir) if data_dir else None,
        "file_format": "array_record",
    }
    if base_name == "ade20k":
        known = [c.name for c in BUILDERS[base_name].BUILDER_CONFIGS]
        if config and config not in known:
            raise ValueError(
                f"Unknown dataset {dataset!r}; ade20k has the configs "
                f"{', '.join(f'ade20k/{name}' for name in known)}."
            )
        kwargs["config"] = config or ("aim2020" if aim_list else "official")
        kwargs["aim_list"] = aim_list
    elif base_name == "image_folder":
        name = config or folder_name or folder_config_name(manual_dir or "images")
        kwargs["config"] = ImageFolderConfig(
            name=name,
            description=f"Images of the folder {manual_dir}.",
            holdout_fraction=holdout_fraction,
        )
    elif config:
        raise ValueError(f"{base_name} has no configs, got {dataset!r}.")
    return BUILDERS[base_name](**kwargs)


def prepare(builder: tfds.core.DatasetBuilder, manual_dir: str | os.PathLike) -> Path:
    """Builds the array_record files from `manual_dir`; returns the prepared dataset folder.

    Raises:
      MissingDownloadError: `manual_dir` is missing or empty, or lacks the expected files.
    """
    manual_dir = Path(manual_dir)
    if not manual_dir.is_dir() or not any(manual_dir.iterdir()):
        raise MissingDownloadError(
            f"{builder.name}: the manual folder {manual_dir} is missing or empty.\n"
            + builder.expected_downloads(manual_dir)
        )
    builder.locate_inputs(manual_dir)  # fails before TFDS starts if an input is missing
    config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir), try_download_gcs=False)
    builder.download_and_prepare(download_config=config)
    return Path(os.fspath(builder.data_dir))


def full_name(builder: tfds.core.DatasetBuilder) -> str:
    """`name/config` to put into the data config's `dataset` key."""
    config = builder.builder_config
    return f"{builder.name}/{config.name}" if config is not None else builder.name


def open_prepared_split(
    dataset: str, split: str, *, data_dir: str | os.PathLike | None = None
) -> Any:
    """Random access to a prepared split: record i = `{"image": bytes, "file_name": bytes}`.

    `dataset` is a name such as "ade20k", "ade20k/aim2020", "image_folder/cats", or the path of
    a prepared dataset folder (the one holding `dataset_info.json`).

    Raises:
      FileNotFoundError: the dataset has not been prepared; the message gives the command.
    """
    decoders = {"image": tfds.decode.SkipDecoding()}
    if os.path.isfile(os.path.join(dataset, "dataset_info.json")):
        builder = tfds.builder_from_directory(dataset)
    else:
        builder = _prepared_builder(dataset, data_dir)
    base_split = split.split("[")[0]
    if base_split not in builder.info.splits:
        available = sorted(builder.info.splits)
        raise ValueError(f"Dataset {dataset!r} has no split {base_split!r}; it has {available}.")
    return builder.as_data_source(split=split, decoders=decoders)


def _prepared_builder(dataset: str, data_dir: str | os.PathLike | None) -> Any:
    data_dir = os.fspath(data_dir) if data_dir else None
    hint = (
        f"Prepare it with:\n  python -m deepgin_jax.data.prepare --dataset {dataset} "
        "--manual_dir DIR"
        + (f" --data_dir {data_dir}" if data_dir else "")
        + (
            f"\n(DIR holds ADEChallengeData2016.zip and the AIM-2020 list, one of "
            f"{list(AIM_LIST_NAMES)}, or add --aim_list FILE)"
            if dataset == "ade20k/aim2020"
            else ""
        )
    )
    try:
        builder = tfds.builder(dataset, data_dir=data_dir)
    except (ValueError, tfds.core.registered.DatasetNotFoundError) as e:
        # An unlisted config (e.g. image_folder/<name>) is only found once prepared.
        raise FileNotFoundError(
            f"Dataset {dataset!r} is not prepared in {data_dir or tfds.core.constants.DATA_DIR}. "
            f"{hint}"
        ) from e
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"Dataset {dataset!r} is not prepared in {builder.data_dir}. {hint}"
        )
    return builder
