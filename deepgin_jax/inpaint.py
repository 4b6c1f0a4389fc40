r"""Inpaint photos with a trained DeepGIN: one file, or every image in a folder.

  python -m deepgin_jax.inpaint --image photo.jpg --mask photo_mask.png \
      --output photo_filled.jpg
  python -m deepgin_jax.inpaint --checkpoint CKPT --image photos/ --mask masks/ --output out/

Without --checkpoint the DeepGIN-compact shipped with the package is used (the log says so
once); --checkpoint names any other generator (a converted model, a training workdir or
checkpoint, a shipped-model folder). On a large photo only a box around the holes goes through
the network (--strategy, default auto: see `deepgin_jax.inference`); the rest of the photo is
kept as it is.

Masks: white (255) = hole, black = keep; --invert_mask for the other polarity. Gray, RGB(A)
and 16-bit masks are accepted; a pixel brighter than --mask_threshold (default 127) is a hole;
an RGBA mask of one colour uses its alpha (a painted layer). --dilate N grows the holes by a
disc of radius N pixels. A mask of another size than its image is an error unless
--resize_mask. --mode reference follows the original test script, which does not threshold the
mask (any value above 0 is a hole, and the result is blended with the mask's grey levels):
--mask_threshold is refused there, while --invert_mask (255 - m) and --dilate (a grey
dilation) apply to the mask before that pipeline. Flags written with hyphens (--invert-mask,
--mask-threshold, ...) work too.

Matching images to masks (--image a folder: every .png/.jpg/.jpeg/.webp/.bmp/.tif/.tiff in
it, not recursive, except files named *_mask.*):
  * --mask a file: that mask for every image;
  * --mask a folder: for image <stem>.<ext>, the mask <stem>.* or else <stem>_mask.*
    (any image extension); for an image <name>_with_holes.* also <name>_mask.*;
  * no --mask: <stem>_mask.* (or <name>_mask.* for <name>_with_holes.*) beside the image.
An image with no mask, or with two candidate masks, is reported and skipped.

Outputs: --output a file (its extension sets the format: .png, .jpg/.jpeg, .webp) or a folder
(created if needed), which receives <stem>.<--format>, with a trailing "_with_holes" dropped
from the stem. Existing outputs are kept (and reported as skipped) unless --overwrite. An output
that would be one of the input images or masks, or an output folder that is the --image
folder, is refused before anything is done. Every output is the input's size; alpha, EXIF and
the ICC profile are kept where the format allows. Outside the (dilated) hole the pixels of a
PNG or WebP output are the input's own, bit for bit: a 16-bit PNG gives a 16-bit PNG (any
16-bit input is kept at 16 bits in PNG; JPEG and WebP hold 8 bits, so a 16-bit image written
to them is rounded to 8 bits, with a warning). WebP is written losslessly (--nolossless_webp
for lossy WebP at --quality); JPEG is always lossy (at --quality), so a run writing JPEG warns
once that the known pixels will not be identical. PNG is written at zlib level --png_compression
(1, fast; 6-9 for files about a quarter smaller, three times slower or more).

A file that cannot be read or inpainted, for whatever reason (a corrupt file, a mask of the
wrong size, the accelerator running out of memory), is reported with its error and skipped;
the exit status is 0 when every image was inpainted or skipped, 1 when some failed, 2 when
nothing could be started (bad arguments, no checkpoint, no shipped weights).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import tqdm
from absl import flags, logging

from deepgin_jax import cli, image_io, shipped
from deepgin_jax.checkpointing import CheckpointNotFoundError
from deepgin_jax.image_io import IMAGE_EXTENSIONS, MASK_SUFFIX, is_image_file, list_images
from deepgin_jax.inference import MAX_DILATE, Inpainter, InpainterBase, MaskOptions, ProgressFn

OUTPUT_EXTENSIONS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp"}
OUTPUT_FORMATS = ("png", "jpg", "webp")
HOLES_SUFFIX = "_with_holes"


@dataclasses.dataclass(frozen=True)
class Task:
    """One image to inpaint: its mask and output, or why it cannot be done."""

    image: Path
    mask: Path | None
    output: Path | None
    error: str | None = None


@dataclasses.dataclass
class Summary:
    """What a run did, image by image."""

    inpainted: list[Path] = dataclasses.field(default_factory=list)
    skipped: list[Path] = dataclasses.field(default_factory=list)
    failed: dict[Path, str] = dataclasses.field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return cli.EXIT_FAILED if self.failed else cli.EXIT_OK


def output_stem(image: Path) -> str:
    """The image's stem without a trailing "_with_holes" (the AIM 2020 naming)."""
    stem = image.stem
    return stem[: -len(HOLES_SUFFIX)] if stem.endswith(HOLES_SUFFIX) else stem


def find_mask(image: Path, mask_dir: Path) -> Path:
    """The mask for `image` in `mask_dir` by the module docstring's rules.

    Raises:
      LookupError: no candidate, or more than one file for the first rule that matches.
    """
    stems = [] if mask_dir.resolve() == image.parent.resolve() else [image.stem]
    stems.append(image.stem + MASK_SUFFIX)
    if image.stem.endswith(HOLES_SUFFIX):
        stems.append(output_stem(image) + MASK_SUFFIX)
    for stem in stems:
        found = sorted(p for p in mask_dir.glob(f"{glob.escape(stem)}.*") if is_image_file(p))
        found = [p for p in found if p.stem == stem and p.resolve() != image.resolve()]
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise LookupError(f"more than one mask matches {image.name}: {names}")
        if found:
            return found[0]
    wanted = " or ".join(f"{s}.*" for s in stems)
    raise LookupError(f"no mask for {image.name}: looked for {wanted} in {mask_dir}")


def plan_tasks(
    image: str | os.PathLike,
    mask: str | os.PathLike | None,
    output: str | os.PathLike,
    output_format: str = "png",
) -> list[Task]:
    """Pairs every input image with its mask and output path (module docstring rules).

    Raises:
      ValueError: the arguments cannot work together (missing input, folder input with a
        file output, an unknown output extension, an output that is an input file or the
        input folder).
    """
    image, output = Path(image), Path(output)
    mask = Path(mask) if mask is not None else None
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
    if mask is not None and not mask.exists():
        raise ValueError(f"--mask {mask} does not exist")
    if image.is_dir():
        if output.suffix.lower() in OUTPUT_EXTENSIONS or output.is_file():
            raise ValueError(f"--image is a folder, so --output must be a folder, not {output}")
        if output.is_dir() and os.path.samefile(output, image):
            raise ValueError(
                f"--output {output} is the --image folder: the results would replace or mix "
                "with the photos (and count as inputs on the next run); choose another folder"
            )
        images = list_images(image)
        if not images:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {image}")
        return _refuse_overwriting_inputs(
            _deduplicate(
                [_task(p, mask, output / f"{output_stem(p)}.{output_format}") for p in images]
            )
        )
    if not image.is_file():
        raise ValueError(f"--image {image} does not exist")
    if output.is_dir() or not output.suffix:
        target = output / f"{output_stem(image)}.{output_format}"
    elif output.suffix.lower() in OUTPUT_EXTENSIONS:
        target = output
    else:
        raise ValueError(
            f"cannot tell the output format from {output.name}; use one of "
            f"{', '.join(OUTPUT_EXTENSIONS)}, or give a folder"
        )
    return _refuse_overwriting_inputs([_task(image, mask, target)])


def _file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing file, so that links and other spellings compare equal."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _refuse_overwriting_inputs(tasks: list[Task]) -> list[Task]:
    """`tasks`, or ValueError if an output would be (resolving links) an input image or mask."""
    inputs: dict[tuple[int, int], tuple[str, Path]] = {}
    for task in tasks:
        for kind, path in (("image", task.image), ("mask", task.mask)):
            if path is not None and (key := _file_id(path)) is not None:
                inputs.setdefault(key, (kind, path))
    for task in tasks:
        if (key := _file_id(task.output)) in inputs:
            kind, path = inputs[key]
            raise ValueError(
                f"the output {task.output} (for {task.image.name}) is the input {kind} {path}; "
                "writing it would destroy the input: choose another --output"
            )
    return tasks


def _task(image: Path, mask: Path | None, output: Path) -> Task:
    if mask is not None and mask.is_file():
        return Task(image, mask, output)
    try:
        return Task(image, find_mask(image, mask if mask is not None else image.parent), output)
    except LookupError as e:
        return Task(image, None, output, str(e))


def _deduplicate(tasks: list[Task]) -> list[Task]:
    """Marks the later of two images that would write the same output as failed."""
    first_by_output: dict[Path, Path] = {}
    result = []
    for task in tasks:
        first = first_by_output.setdefault(task.output, task.image)
        if first != task.image:
            task = dataclasses.replace(
                task, error=f"{task.output.name} is already the output of {first.name}"
            )
        result.append(task)
    return result


def inpaint_file(
    inpainter: InpainterBase,
    task: Task,
    mask_options: MaskOptions,
    quality: int = 95,
    lossless_webp: bool = True,
    progress: ProgressFn | None = None,
    png_compression: int = image_io.PNG_COMPRESSION,
) -> None:
    """Reads, inpaints and writes (atomically) one task's image, at the input's bit depth: the
    RGB goes through the inpainter, the alpha channel and metadata straight to the output;
    `progress` follows the network's work (`InpainterBase.inpaint`).

    Raises:
      image_io.ImageReadError, inference.MaskSizeError (both ValueError), OSError, and
      whatever the network raises (e.g. a runtime error when out of memory).
    """
    loaded = image_io.load_image(task.image, keep_16_bit=True)
    result = inpainter.inpaint(
        loaded.rgb,
        image_io.read_mask(task.mask),
        invert_mask=mask_options.invert,
        threshold=mask_options.threshold,
        dilate=mask_options.dilate,
        resize_mask=mask_options.resize,
        progress=progress,
    )
    image_io.save_image(
        task.output,
        result,
        alpha=loaded.alpha,
        exif=loaded.exif,
        icc_profile=loaded.icc_profile,
        quality=quality,
        lossless_webp=lossless_webp,
        png_compression=png_compression,
    )


def inpaint_tasks(
    inpainter: InpainterBase | Callable[[], InpainterBase],
    tasks: Iterable[Task],
    mask_options: MaskOptions,
    *,
    overwrite: bool = False,
    quality: int = 95,
    lossless_webp: bool = True,
    progress: bool = True,
    png_compression: int = image_io.PNG_COMPRESSION,
) -> Summary:
    """Runs every task with a progress bar; one failure (any Exception) is logged with its
    file and the rest go on.

    `inpainter` may be a factory, called only if some task has work to do (so a rerun that
    skips every output does not load the model).
    """
    tasks = list(tasks)
    summary = Summary()
    warned_lossy = False
    bar = tqdm.tqdm(
        total=len(tasks), desc="inpainting", unit="image", disable=not progress, bar_format=BAR
    )
    with cli.logs_above_progress_bars(), bar:
        for task in tasks:
            with _one_image_of(bar) as image_progress:
                if task.error is not None:
                    summary.failed[task.image] = task.error
                    logging.error("%s: %s", task.image, task.error)
                    continue
                if task.output.exists() and not overwrite:
                    summary.skipped.append(task.image)
                    logging.info("%s exists; skipped (use --overwrite to replace it)", task.output)
                    continue
                if not isinstance(inpainter, InpainterBase):
                    inpainter = inpainter()
                if not warned_lossy and _is_lossy(task.output, lossless_webp):
                    warned_lossy = True
                    logging.warning(
                        "%s output is lossy: pixels outside the holes will not be bit-identical "
                        "to the input; write PNG or lossless WebP to keep them exactly.",
                        task.output.suffix.lstrip(".").upper(),
                    )
                try:
                    inpaint_file(
                        inpainter,
                        task,
                        mask_options,
                        quality,
                        lossless_webp,
                        image_progress,
                        png_compression,
                    )
                except Exception as e:  # one bad file must not end the run; Ctrl-C still does
                    summary.failed[task.image] = _failure_message(task.image, e)
                    logging.error("%s", summary.failed[task.image])
                    logging.debug("Traceback of the failure on %s", task.image, exc_info=True)
                    continue
                summary.inpainted.append(task.image)
    logging.info(
        "Inpainted %d image(s), skipped %d existing output(s), %d failed.",
        len(summary.inpainted),
        len(summary.skipped),
        len(summary.failed),
    )
    return summary


# The count of images done is fractional while one is in the network ("0.25/1 image").
BAR = "{l_bar}{bar}| {n:.2f}/{total_fmt} {unit} [{elapsed}<{remaining}{postfix}]"


@contextlib.contextmanager
def _one_image_of(bar: tqdm.tqdm) -> Iterator[ProgressFn]:
    """A `progress` callback that moves `bar` through one image as its network inputs are
    done ("sub-images 3/12" beside it); the image is counted whole on leaving."""
    start = bar.n

    def image_progress(done: int, total: int) -> None:
        bar.set_postfix_str(f"sub-images {done}/{total}", refresh=False)
        bar.update(start + done / total - bar.n)

    yield image_progress
    bar.set_postfix_str("", refresh=False)
    bar.update(start + 1 - bar.n)


def _is_lossy(output: Path, lossless_webp: bool) -> bool:
    suffix = output.suffix.lower()
    return OUTPUT_EXTENSIONS.get(suffix) == "jpg" or (suffix == ".webp" and not lossless_webp)


def _failure_message(image: Path, error: Exception) -> str:
    """The file and the error; the exception's type too where it is not a plain input error."""
    text = str(error) or repr(error)
    if not isinstance(error, (ValueError, OSError)):
        text = f"{type(error).__name__}: {text}"
    return text if str(image) in text else f"{image}: {text}"


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The command-line flags (defined only when run as a program, or on `flag_values`)."""
    fv = {"flag_values": flag_values}
    cli.define_checkpoint_flag(flag_values)
    flags.DEFINE_string("image", None, "An image file, or a folder of images.", **fv)
    flags.DEFINE_string(
        "mask",
        None,
        "A mask file (for every image) or a folder of masks; default: <stem>_mask.* beside "
        "each image.",
        **fv,
    )
    flags.DEFINE_string("output", None, "Output file (format from its extension) or folder.", **fv)
    flags.DEFINE_bool("invert_mask", False, "Masks mark the known region white.", **fv)
    flags.DEFINE_integer(
        "mask_threshold",
        None,
        "Mask values above this (0-255) are holes; default 127. Not with --mode reference "
        "(any value above 0 is a hole there).",
        lower_bound=0,
        upper_bound=254,
        **fv,
    )
    flags.DEFINE_integer(
        "dilate",
        0,
        f"Grow holes by a disc of this radius (pixels, at most {MAX_DILATE}).",
        lower_bound=0,
        upper_bound=MAX_DILATE,
        **fv,
    )
    flags.DEFINE_bool(
        "resize_mask",
        False,
        "Resize masks of another size to their image (nearest neighbour) instead of failing.",
        **fv,
    )
    flags.DEFINE_bool("overwrite", False, "Replace existing outputs.", **fv)
    flags.DEFINE_integer(
        "quality",
        95,
        "JPEG quality (and WebP quality with --nolossless_webp).",
        lower_bound=1,
        upper_bound=100,
        **fv,
    )
    flags.DEFINE_bool(
        "lossless_webp",
        True,
        "Write WebP losslessly (known pixels bit-identical); --nolossless_webp: lossy WebP.",
        **fv,
    )
    flags.DEFINE_integer(
        "png_compression",
        image_io.PNG_COMPRESSION,
        "zlib level of PNG outputs: 1 (the default) writes fast, 6 (Pillow's default) to 9 "
        "write files about a quarter smaller, at three times the time or more.",
        lower_bound=0,
        upper_bound=9,
        **fv,
    )
    flags.DEFINE_enum(
        "format", "png", list(OUTPUT_FORMATS), "Format of outputs written into a folder.", **fv
    )
    cli.define_inpainter_flags(flag_values)
    cli.define_hyphenated_aliases(
        flag_values,
        ["invert_mask", "mask_threshold", "resize_mask", "lossless_webp", "png_compression"],
    )
    flags.adopt_module_key_flags(cli, flag_values=flag_values)  # --help lists them here


def run(flag_values: flags.FlagValues) -> int:
    """Runs the command for parsed `flag_values`; returns the exit status (module docstring)."""
    f = flag_values
    cli.require_flags(f, ["image", "output"])
    mask_options = MaskOptions(
        invert=f.invert_mask, threshold=f.mask_threshold, dilate=f.dilate, resize=f.resize_mask
    )
    if (problem := cli.inpainter_flags_problem(f, mask_options)) is not None:
        return cli.usage_failure("%s", problem)
    try:
        shipped.check_generator_path(f.checkpoint)
    except CheckpointNotFoundError as e:
        return cli.generator_failure(f.checkpoint, e)
    try:
        tasks = plan_tasks(f.image, f.mask, f.output, f.format)
    except ValueError as e:
        return cli.usage_failure("%s", e)
    inpainter = functools.partial(
        Inpainter.from_checkpoint,
        f.checkpoint,
        few_calls=len(tasks) == 1,  # the network runs once or a few times
        **cli.inpainter_options(f),
    )
    cli.one_blas_thread()
    cli.no_huge_page_advice()
    cli.reuse_freed_memory()
    try:
        summary = inpaint_tasks(
            inpainter,
            tasks,
            mask_options,
            overwrite=f.overwrite,
            quality=f.quality,
            lossless_webp=f.lossless_webp,
            png_compression=f.png_compression,
        )
    except CheckpointNotFoundError as e:
        return cli.generator_failure(f.checkpoint, e)
    return summary.exit_code


def main(argv: Sequence[str]) -> Any:
    cli.reject_arguments(argv)
    return run(flags.FLAGS)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
