r"""Evaluate DeepGIN checkpoints and classical baselines on an image folder and a fixed mask set.

  python -m deepgin_jax.masks --type mixed --count 1000 --size 256 --seed 0 --output masks256/
  python -m deepgin_jax.evaluate --images photos/ --masks masks256/ \
      --checkpoint deepgin=checkpoints/deepgin --baselines telea,ns \
      --weights weights/ --output eval/

Every image (sorted by name) is cropped to its central square and resized to --size; image a
is paired with the masks (a*K + k) mod M of the set, k < K = --masks-per-image (K = 1: image
i with mask i, cycling). Every method sees the same pairs. PSNR, SSIM and L1 (%) are always
computed on the whole composited image; LPIPS when --weights holds lpips_vgg.npz (or
lpips_alex.npz with --lpips-net alex), FID when it holds fid_inception.npz (write them with
`python -m deepgin_jax.pretrained --output weights/`). Means per mask type and per hole-ratio
bucket (0-10%, ..., 50-60%, >60%).

Writes to --output: per_image.csv, results.md, summary.json and grid.png (masked input | each
method | original, for the first --grid pairs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from absl import app, flags, logging

from deepgin_jax import evaluation
from deepgin_jax.inference import MODES, default_max_batch
from deepgin_jax.inpaint import DTYPES


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The command-line flags (defined only when run as a program, or on `flag_values`)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("images", None, "Folder of evaluation images.", **fv)
    flags.DEFINE_string("masks", None, "Mask set folder (python -m deepgin_jax.masks).", **fv)
    flags.DEFINE_string("output", None, "Folder for the reports.", **fv)
    flags.DEFINE_multi_string(
        "checkpoint", [], "NAME=DIR (or DIR, named after the folder); repeatable.", **fv
    )
    flags.DEFINE_list("baselines", [], "Classical baselines: telea, ns.", **fv)
    flags.DEFINE_float("inpaint-radius", 3.0, "Neighbourhood radius of the baselines (px).", **fv)
    flags.DEFINE_integer("size", 256, "Evaluation image size (square).", lower_bound=16, **fv)
    flags.DEFINE_integer("masks-per-image", 1, "Masks per image.", lower_bound=1, **fv)
    flags.DEFINE_integer("max-images", None, "Use only the first N images.", lower_bound=1, **fv)
    flags.DEFINE_string("weights", None, "Folder with lpips_*.npz and fid_inception.npz.", **fv)
    flags.DEFINE_enum("lpips-net", "vgg", sorted(evaluation.LPIPS_FILES), "LPIPS backbone.", **fv)
    flags.DEFINE_integer("batch-size", 16, "Pairs per step.", lower_bound=1, **fv)
    flags.DEFINE_integer(
        "max-batch",
        None,
        "Most network inputs per call (default: 4 on CPU, 16 on GPU/TPU).",
        lower_bound=1,
        **fv,
    )
    flags.DEFINE_integer(
        "fid-min-count",
        1000,
        "Fewest pairs of a mask type for a per-type FID.",
        lower_bound=2,
        **fv,
    )
    flags.DEFINE_integer("grid", 8, "Pairs shown in grid.png.", lower_bound=0, **fv)
    flags.DEFINE_bool("save-images", False, "Also write every output under images/.", **fv)
    flags.DEFINE_enum("mode", "auto", list(MODES), "Inpainter mode of the checkpoints.", **fv)
    flags.DEFINE_bool("ensemble", None, "x5 self-ensemble for the checkpoints.", **fv)
    flags.DEFINE_enum("dtype", "float32", list(DTYPES), "Computation dtype of the network.", **fv)


def run(flag_values: flags.FlagValues) -> dict[str, Any]:
    """Runs the evaluation for parsed `flag_values`; returns the summary."""
    f = flag_values
    for name in ("images", "masks", "output"):
        if f[name].value is None:
            raise app.UsageError(f"--{name} is required")
    if not f.checkpoint and not f.baselines:
        raise app.UsageError("give at least one --checkpoint or --baselines")
    try:
        methods = evaluation.build_methods(
            f.checkpoint,
            f.baselines,
            radius=f["inpaint-radius"].value,
            mode=f.mode,
            ensemble=f.ensemble,
            dtype=DTYPES[f.dtype],
            max_batch=f["max-batch"].value or default_max_batch(),
        )
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    summary = evaluation.evaluate(
        f.images,
        f.masks,
        methods,
        f.output,
        size=f.size,
        masks_per_image=f["masks-per-image"].value,
        max_images=f["max-images"].value,
        weights_dir=f.weights,
        lpips_net=f["lpips-net"].value,
        batch_size=f["batch-size"].value,
        fid_min_count=f["fid-min-count"].value,
        grid_count=f.grid,
        save_images=f["save-images"].value,
    )
    logging.info("Wrote %s/results.md", f.output)
    return summary


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        run(flags.FLAGS)
    except (ValueError, OSError) as e:  # bad inputs: name the problem, no traceback
        logging.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
