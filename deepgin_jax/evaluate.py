r"""Evaluate DeepGIN checkpoints and classical baselines on an image folder and a fixed mask set.

  python -m deepgin_jax.masks --type mixed --count 1000 --size 256 --seed 0 --output masks256/
  python -m deepgin_jax.evaluate --images photos/ --masks masks256/ \
      --checkpoint deepgin=checkpoints/deepgin --baselines telea,ns,patchmatch \
      --weights weights/ --output eval/
  python -m deepgin_jax.evaluate --images photos/ --masks masks256/ --baselines telea \
      --output eval/              # no --checkpoint: the shipped DeepGIN-compact beside Telea
  python -m deepgin_jax.evaluate --full_size --images photos/ --weights weights/ \
      --baselines telea,ns,biharmonic,fsr_fast,patchmatch --output eval_full/

Every image (sorted by name) is cropped to its central square and resized to --size; image a
is paired with the masks (a*K + k) mod M of the set, k < K = --masks_per_image (K = 1: image
i with mask i, cycling). Every method sees the same pairs. Without --checkpoint the model
shipped with the package is evaluated (beside any --baselines). PSNR, SSIM and L1 (%) are
always computed on the whole composited image, and PSNR and L1 (%) on the hole's pixels
alone; LPIPS when --weights holds lpips_vgg.npz (or lpips_alex.npz with --lpips_net alex), FID
when it holds fid_inception.npz (write them with
`python -m deepgin_jax.pretrained --output weights/`). Means per mask type and per hole-ratio
bucket (0-10%, ..., 50-60%, >60%).

Writes to --output: per_image.csv, results.md, summary.json and grid.png (masked input | each
method | original, for the first --grid pairs). Flags written with hyphens (--masks-per-image,
--fid-min-count, ...) work too.

--full_size scores the photos at their own size instead, with no mask set: one seeded hole of
each --holes kind per photo (object-sized ellipses and boxes, strokes scaled to the photo),
hole PSNR, hole L1, LPIPS around the hole, the grid excess and the colour error, with
bootstrap intervals and paired differences from the first method (`full_size_evaluation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from absl import app, flags, logging

from deepgin_jax import baselines, cli, evaluation, full_size_evaluation


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The command-line flags (defined only when run as a program, or on `flag_values`)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("images", None, "Folder of evaluation images.", **fv)
    flags.DEFINE_string("masks", None, "Mask set folder (python -m deepgin_jax.masks).", **fv)
    flags.DEFINE_string("output", None, "Folder for the reports.", **fv)
    cli.define_checkpoint_flag(flag_values, repeatable=True)
    flags.DEFINE_list(
        "baselines", [], f"Classical baselines: {', '.join(baselines.BASELINES)}.", **fv
    )
    flags.DEFINE_float("inpaint_radius", 3.0, "Neighbourhood radius of telea and ns (px).", **fv)
    flags.DEFINE_integer("size", 256, "Evaluation image size (square).", lower_bound=16, **fv)
    flags.DEFINE_integer("masks_per_image", 1, "Masks per image.", lower_bound=1, **fv)
    flags.DEFINE_integer("max_images", None, "Use only the first N images.", lower_bound=1, **fv)
    flags.DEFINE_string("weights", None, "Folder with lpips_*.npz and fid_inception.npz.", **fv)
    flags.DEFINE_enum("lpips_net", "vgg", sorted(evaluation.LPIPS_FILES), "LPIPS backbone.", **fv)
    flags.DEFINE_integer("batch_size", 16, "Pairs per step.", lower_bound=1, **fv)
    flags.DEFINE_integer(
        "fid_min_count",
        1000,
        "Fewest pairs of a mask type for a per-type FID.",
        lower_bound=2,
        **fv,
    )
    flags.DEFINE_integer("grid", 8, "Pairs shown in grid.png.", lower_bound=0, **fv)
    flags.DEFINE_bool("save_images", False, "Also write every output under images/.", **fv)
    flags.DEFINE_bool(
        "full_size", False, "Score photos at their own size with drawn holes (no --masks).", **fv
    )
    flags.DEFINE_list(
        "holes",
        list(full_size_evaluation.HOLE_KINDS),
        f"--full_size: hole kinds, some of {', '.join(full_size_evaluation.HOLE_KINDS)}.",
        **fv,
    )
    flags.DEFINE_integer("seed", 0, "--full_size: the holes' seed.", lower_bound=0, **fv)
    flags.DEFINE_integer(
        "bootstrap",
        full_size_evaluation.BOOTSTRAP_RESAMPLES,
        "--full_size: bootstrap resamples per interval.",
        lower_bound=1,
        **fv,
    )
    cli.define_inpainter_flags(flag_values)
    cli.define_hyphenated_aliases(
        flag_values,
        [
            "inpaint_radius",
            "masks_per_image",
            "max_images",
            "lpips_net",
            "batch_size",
            "fid_min_count",
            "save_images",
            "full_size",
        ],
    )
    flags.adopt_module_key_flags(cli, flag_values=flag_values)  # --help lists them here


def run(flag_values: flags.FlagValues) -> dict[str, Any]:
    """Runs the evaluation for parsed `flag_values`; returns the summary."""
    f = flag_values
    cli.require_flags(f, ["images", "output"] if f.full_size else ["images", "masks", "output"])
    if f.full_size and f.masks is not None:
        raise app.UsageError("--full_size draws its own holes: leave out --masks")
    if f.full_size and (bad := [k for k in f.holes if k not in full_size_evaluation.HOLE_KINDS]):
        raise app.UsageError(
            f"--holes: unknown kind {bad[0]!r}; known: {', '.join(full_size_evaluation.HOLE_KINDS)}"
        )
    if (problem := cli.inpainter_flags_problem(f)) is not None:
        raise app.UsageError(problem)
    try:
        methods = evaluation.build_methods(
            f.checkpoint, f.baselines, radius=f.inpaint_radius, **cli.inpainter_options(f)
        )
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    if f.full_size:
        summary = full_size_evaluation.evaluate_full_size(
            f.images,
            methods,
            f.output,
            hole_kinds=f.holes,
            seed=f.seed,
            max_images=f.max_images,
            weights_dir=f.weights,
            lpips_net=f.lpips_net,
            resamples=f.bootstrap,
            save_images=f.save_images,
        )
        logging.info("Wrote %s/results.md", f.output)
        return summary
    summary = evaluation.evaluate(
        f.images,
        f.masks,
        methods,
        f.output,
        size=f.size,
        masks_per_image=f.masks_per_image,
        max_images=f.max_images,
        weights_dir=f.weights,
        lpips_net=f.lpips_net,
        batch_size=f.batch_size,
        fid_min_count=f.fid_min_count,
        grid_count=f.grid,
        save_images=f.save_images,
    )
    logging.info("Wrote %s/results.md", f.output)
    return summary


def main(argv: Sequence[str]) -> int:
    cli.reject_arguments(argv)
    run(flags.FLAGS)  # a bad input (ValueError, OSError) is reported by cli.run: one line
    return cli.EXIT_OK


if __name__ == "__main__":
    define_flags()
    cli.run(main)
