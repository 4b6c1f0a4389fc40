"""What the command lines share: the generator's flags, exit codes and error reporting.

Flags are spelled as absl spells them, with underscores (`--max_batch`); every command also
accepts the hyphenated spellings of earlier versions (`--max-batch`) as aliases.

Exit codes: `EXIT_OK` (0) everything done; `EXIT_FAILED` (1) some inputs failed and the rest
was done; `EXIT_USAGE` (2) nothing could start (bad arguments, no checkpoint), reported in one
line without a traceback (`usage_failure`; `error_failure` for an exception, whose traceback
`-v 1` or DEEPGIN_TRACEBACK=1 adds).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from absl import app, flags, logging

from deepgin_jax.inference import BLENDS, MODES, STRATEGIES, default_max_batch

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
TRACEBACK_ENV_VAR = "DEEPGIN_TRACEBACK"

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
CHECKPOINT_HELP = (
    "Generator: a converted model, training checkpoint step, checkpoints/ folder, training "
    "workdir or shipped-model folder. Default: the DeepGIN-compact shipped with the package "
    "(deepgin_jax/weights/compact, or the folder $DEEPGIN_SHIPPED_WEIGHTS names)."
)


def define_hyphenated_aliases(flag_values: flags.FlagValues, names: Sequence[str]) -> None:
    """Accepts `--a-b` for each flag `--a_b` in `names` (their spellings in earlier versions)."""
    for name in names:
        flags.DEFINE_alias(name.replace("_", "-"), name, flag_values=flag_values)


def define_checkpoint_flag(flag_values: flags.FlagValues, *, repeatable: bool = False) -> None:
    """`--checkpoint`: one generator, or with `repeatable` NAME=DIR (or DIR) any number of
    times."""
    if repeatable:
        flags.DEFINE_multi_string(
            "checkpoint",
            [],
            "NAME=DIR (or DIR, named after the folder); repeatable. DIR: a converted model, a "
            "training checkpoint step, a checkpoints/ folder, a training workdir or a "
            "shipped-model folder. Default: the DeepGIN-compact shipped with the package.",
            flag_values=flag_values,
        )
    else:
        flags.DEFINE_string("checkpoint", None, CHECKPOINT_HELP, flag_values=flag_values)


def define_inpainter_flags(flag_values: flags.FlagValues) -> None:
    """`--max_batch`, `--dtype`, `--mode`, `--strategy`, `--ensemble`, `--upscale` and `--blend`:
    how an `Inpainter` runs the generator (read them back with `inpainter_options`)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_integer(
        "max_batch",
        None,
        "Most network inputs per call (default: 4 on CPU, 16 on GPU/TPU).",
        lower_bound=1,
        **fv,
    )
    flags.DEFINE_enum("dtype", "float32", list(DTYPES), "Computation dtype of the network.", **fv)
    flags.DEFINE_enum(
        "mode",
        "auto",
        list(MODES),
        "auto: an image up to 256 px whole, a larger one as 256x256 sub-images, nothing "
        "resampled; reference: the original test script, exactly.",
        **fv,
    )
    flags.DEFINE_enum(
        "strategy",
        "auto",
        list(STRATEGIES),
        "How much of a photo the network sees (--mode auto): crop: only a box around the holes "
        "(their bounding box grown 2x, at least 256 px a side), pasted back, the rest of the "
        "photo untouched; whole: all of it; auto: crop when that box is at most half the "
        "photo.",
        **fv,
    )
    flags.DEFINE_bool(
        "ensemble",
        None,
        "x5 rotation/flip self-ensemble (5x slower); default: on in reference mode, off in "
        "auto mode.",
        **fv,
    )
    flags.DEFINE_float(
        "upscale",
        None,
        "--mode auto: run a photo smaller than 256 px enlarged up to this many times (at most "
        "to 256 px; the fill is sampled back down), 1 = off; default: the model's own (2 for "
        "the shipped DeepGIN-compact, else 1).",
        lower_bound=1.0,
        **fv,
    )
    flags.DEFINE_enum(
        "blend",
        None,
        list(BLENDS),
        "--mode auto: how the fill meets the photo: paste (its pixels as they are) or poisson "
        "(gradient-domain: no seam at the hole's border); default: the model's own (poisson "
        "for the shipped DeepGIN-compact, else paste).",
        **fv,
    )
    define_hyphenated_aliases(flag_values, ["max_batch"])


def inpainter_options(flag_values: flags.FlagValues) -> dict[str, Any]:
    """Keyword arguments of `Inpainter.from_checkpoint` from `define_inpainter_flags`'s flags."""
    return {
        "mode": flag_values.mode,
        "strategy": flag_values.strategy,
        "ensemble": flag_values.ensemble,
        "upscale": flag_values.upscale,
        "blend": flag_values.blend,
        "dtype": DTYPES[flag_values.dtype],
        "max_batch": flag_values.max_batch or default_max_batch(),
    }


def inpainter_flags_problem(flag_values: flags.FlagValues) -> str | None:
    """Why `define_inpainter_flags`'s flags cannot work together, or None."""
    if flag_values.mode == "reference" and flag_values.strategy == "crop":
        return (
            "--strategy crop cannot apply with --mode reference, which resamples the whole "
            "photo as the original test script does; drop --strategy or use --mode auto"
        )
    if flag_values.mode == "reference" and flag_values.upscale not in (None, 1.0):
        return (
            f"--upscale {flag_values.upscale:g} cannot apply with --mode reference, which "
            "resamples the photo as the original test script does; drop --upscale or use "
            "--mode auto"
        )
    if flag_values.mode == "reference" and flag_values.blend not in (None, "paste"):
        return (
            f"--blend {flag_values.blend} cannot apply with --mode reference, which blends by "
            "the soft mask as the original test script does; drop --blend or use --mode auto"
        )
    return None


def generator_failure(checkpoint: str | None, error: Exception) -> int:
    """Logs why the generator of `checkpoint` (None: the shipped one) cannot be loaded (no
    traceback) and returns EXIT_USAGE."""
    if checkpoint is None:
        return usage_failure("%s", error)
    return usage_failure("cannot load --checkpoint %s: %s", checkpoint, error)


def require_flags(flag_values: flags.FlagValues, names: Sequence[str]) -> None:
    """app.UsageError naming the first flag of `names` that was not given."""
    for name in names:
        if flag_values[name].value is None:
            raise app.UsageError(f"--{name} is required")


def reject_arguments(argv: Sequence[str]) -> None:
    """app.UsageError for positional arguments (every command takes flags only)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")


def usage_failure(message: str, *args: Any) -> int:
    """Logs why nothing could start (no traceback: the user's to fix) and returns EXIT_USAGE."""
    logging.error(message, *args)
    return EXIT_USAGE


def one_line(text: str) -> str:
    """`text` with its lines joined by spaces: an error message as a one-line report."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def wants_traceback() -> bool:
    """Whether errors that stop a command are logged with their traceback: `-v 1` or more, or
    DEEPGIN_TRACEBACK set (to anything but 0)."""
    return logging.get_verbosity() >= 1 or os.environ.get(TRACEBACK_ENV_VAR, "0") not in ("", "0")


def error_failure(error: BaseException, message: str | None = None) -> int:
    """`usage_failure` for an exception: `message` (default: the error's) in one line, with
    the traceback only when `wants_traceback()`."""
    text = one_line(message if message is not None else str(error))
    if wants_traceback():
        logging.error("%s", text, exc_info=error)
        return EXIT_USAGE
    return usage_failure("%s", text)
