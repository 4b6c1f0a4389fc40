"""Prepares a dataset from files the user downloaded: `python -m deepgin_jax.data.prepare`.

    python -m deepgin_jax.data.prepare --dataset ade20k --manual_dir ~/downloads \
        [--aim_list new_image_names.txt] [--data_dir ~/tensorflow_datasets]
    python -m deepgin_jax.data.prepare --dataset ade20k/aim2020 --manual_dir ~/downloads
        (the AIM-2020 list, new_image_names.txt, found in --manual_dir)
    python -m deepgin_jax.data.prepare --dataset image_folder --manual_dir ~/photos \
        [--holdout_fraction 0.1] [--name photos]

It writes array_record files (TFDS layout) and prints the name to use as `config.data.dataset`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from deepgin_jax.data import builders


def prepare_dataset(
    dataset: str,
    manual_dir: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    aim_list: str | os.PathLike | None = None,
    folder_name: str | None = None,
    holdout_fraction: float = 0.0,
) -> tuple[str, Path, dict[str, int]]:
    """Prepares `dataset` from `manual_dir`.

    Returns:
      (name for `config.data.dataset`, prepared folder, number of images per split).

    Raises:
      builders.MissingDownloadError: the expected archive/folder is not in `manual_dir`.
    """
    manual_dir = Path(manual_dir).expanduser()
    if aim_list and not dataset.startswith("ade20k"):
        raise ValueError("--aim_list only applies to --dataset ade20k.")
    if aim_list and not Path(aim_list).is_file():
        raise FileNotFoundError(f"AIM-2020 list {aim_list} does not exist.")
    builder = builders.make_builder(
        dataset,
        data_dir=data_dir,
        aim_list=aim_list,
        folder_name=folder_name,
        holdout_fraction=holdout_fraction,
        manual_dir=manual_dir,
    )
    prepared = builders.prepare(builder, manual_dir)
    counts = {name: info.num_examples for name, info in builder.info.splits.items()}
    return builders.full_name(builder), prepared, counts


def _main(argv: list[str]) -> None:
    from absl import flags

    del argv
    f = flags.FLAGS
    try:
        name, prepared, counts = prepare_dataset(
            f.dataset,
            f.manual_dir,
            data_dir=f.data_dir,
            aim_list=f.aim_list,
            folder_name=f.name,
            holdout_fraction=f.holdout_fraction,
        )
    except (FileNotFoundError, ValueError) as e:  # missing downloads, bad lists: no traceback
        sys.exit(f"error: {e}")
    splits = ", ".join(f"{split}: {count}" for split, count in sorted(counts.items()))
    data_dir_line = f"\n  config.data.data_dir = {f.data_dir!r}" if f.data_dir else ""
    print(
        f"Prepared {name} ({splits}) in {prepared}\n"
        f"Train on it with:\n  config.data.dataset = {name!r}{data_dir_line}"
    )


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string(
        "dataset",
        None,
        f"Dataset to prepare: one of {sorted(builders.BUILDERS)}, or ade20k/official, "
        "ade20k/aim2020 (the AIM-2020 training list, from --aim_list or found in --manual_dir).",
    )
    flags.DEFINE_string("manual_dir", None, "Folder holding the downloaded archive/folder.")
    flags.DEFINE_string(
        "data_dir", None, "Where to write the prepared data (TFDS default if unset)."
    )
    flags.DEFINE_string("aim_list", None, "ade20k only: AIM-2020 list of training image names.")
    flags.DEFINE_string("name", None, "image_folder only: config name (default: folder name).")
    flags.DEFINE_float(
        "holdout_fraction",
        0.0,
        "image_folder only: share of images held out as 'test' (no train/ + test/ layout).",
        lower_bound=0.0,
        upper_bound=0.99,
    )
    flags.mark_flags_as_required(["dataset", "manual_dir"])


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(_main)
