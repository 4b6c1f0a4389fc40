"""What the command lines share: the generator's flags, exit codes and error reporting.

Flags are spelled as absl spells them, with underscores (`--max_batch`); every command also
accepts the hyphenated spellings of earlier versions (`--max-batch`) as aliases.

Exit codes: `EXIT_OK` (0) everything done; `EXIT_FAILED` (1) some inputs failed and the rest
was done; `EXIT_USAGE` (2) nothing could start (bad arguments, no checkpoint, an unreadable
input); 128 + N when signal N (SIGINT, SIGTERM, SIGHUP) stopped the command.

Every command starts through `run(main)`: a user's error (`USER_ERRORS`: a ValueError, an
OSError or an ImportError, which include a missing or mismatching checkpoint, an unreadable
image, a bad file to convert and a missing optional package) is logged as one line and exits
with `EXIT_USAGE`, its traceback shown only with `-v` (`--verbosity=1`) or DEEPGIN_TRACEBACK=1;
SIGTERM and SIGHUP unwind the command as Ctrl-C does, so that `atomic.atomic_write` removes
its temporary file.

The commands that run a generator define `--xla_cache` (`define_compilation_cache_flag`): `run`
turns on the persistent compilation cache (`deepgin_jax.compile_cache`) before `main` starts.
JAX's report of the backends it probed and did not find (`Unable to initialize backend 'tpu'`)
is shown only with `-v`.
"""

from __future__ import annotations

import contextlib
import gc
import logging as std_logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from absl import app, flags, logging

if TYPE_CHECKING:
    from deepgin_jax.inference import InpaintOptions, MaskOptions

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
TRACEBACK_ENV_VAR = "DEEPGIN_TRACEBACK"

# The errors a user can fix (bad arguments, missing or corrupt files, a missing optional package
# such as torch for the converters): one line, no traceback.
USER_ERRORS = (ValueError, OSError, ImportError)
UNWINDING_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)

DTYPES = ("float32", "bfloat16", "float16")  # jax.numpy's names
CHECKPOINT_HELP = (
    "Generator: a converted model, training checkpoint step, checkpoints/ folder, training "
    "workdir, shipped-model folder (or its generator.npz), or 'shipped'. Default: the "
    "DeepGIN-compact shipped with the package (deepgin_jax/weights/compact, or the folder "
    "$DEEPGIN_SHIPPED_WEIGHTS names)."
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


def define_compilation_cache_flag(flag_values: flags.FlagValues) -> None:
    """`--xla_cache`: where `run` keeps compiled programs (`deepgin_jax.compile_cache`)."""
    if "xla_cache" in flag_values:
        return
    flags.DEFINE_string(
        "xla_cache",
        None,
        "Folder of the persistent XLA compilation cache (a later run reuses the compiled "
        "network instead of compiling it again); 'off' disables it. Default: "
        "$DEEPGIN_XLA_CACHE, else $JAX_COMPILATION_CACHE_DIR, else "
        "$XDG_CACHE_HOME/deepgin_jax/xla (~/.cache/deepgin_jax/xla).",
        flag_values=flag_values,
    )
    define_hyphenated_aliases(flag_values, ["xla_cache"])


def define_inpainter_flags(flag_values: flags.FlagValues) -> None:
    """`--max_batch`, `--parallel_calls`, `--dtype`, `--mode`, `--strategy`, `--ensemble`,
    `--upscale`, `--blend` and `--[no]detail`: how an `Inpainter` runs the generator (read
    them back with `inpainter_options`)."""
    # Imported here: the commands without a generator (masks, converters) start without JAX.
    from deepgin_jax.inference import BLENDS, MODES, STRATEGIES

    fv = {"flag_values": flag_values}
    define_compilation_cache_flag(flag_values)
    flags.DEFINE_integer(
        "max_batch",
        None,
        "Most network inputs per call (default: 4 on CPU, 16 on GPU/TPU).",
        lower_bound=1,
        **fv,
    )
    flags.DEFINE_integer(
        "parallel_calls",
        None,
        "Network calls run at once, each in its own thread (default: one per core on a CPU, "
        "where one call of a small network keeps about one core busy; 1 on GPU/TPU).",
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
        "How a photo larger than 256 px runs (--mode auto): auto or scaled: a box around each "
        "hole (3x its side) downscaled to 256 px and filled in one pass, brought back to full "
        "size; or as the reference's 256x256 polyphase sub-images: crop (the holes' box grown "
        "2x, at least 256 px), whole (all of it), polyphase (crop when that box is at most "
        "half the photo, else whole).",
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
    flags.DEFINE_bool(
        "detail",
        None,
        "--strategy auto/scaled: bring the known region's full-resolution texture into a fill "
        "made at low resolution (contextual residual aggregation, without a grid): lower "
        "LPIPS for a few hundredths of a dB of hole PSNR. Default: on with those strategies; "
        "--nodetail keeps the smooth fill.",
        **fv,
    )
    define_hyphenated_aliases(flag_values, ["max_batch"])


def inpaint_options(flag_values: flags.FlagValues) -> InpaintOptions:
    """The `inference.InpaintOptions` of `define_inpainter_flags`'s flags."""
    from deepgin_jax.inference import InpaintOptions, default_max_batch

    return InpaintOptions(
        mode=flag_values.mode,
        strategy=flag_values.strategy,
        ensemble=flag_values.ensemble,
        upscale=flag_values.upscale,
        blend=flag_values.blend,
        detail=flag_values.detail,
        max_batch=flag_values.max_batch or default_max_batch(),
        parallel_calls=flag_values.parallel_calls,
    )


def inpainter_options(flag_values: flags.FlagValues) -> dict[str, Any]:
    """Keyword arguments of `Inpainter.from_checkpoint` from `define_inpainter_flags`'s flags:
    `options` (`inpaint_options`) and `dtype`."""
    import jax.numpy as jnp

    return {"options": inpaint_options(flag_values), "dtype": getattr(jnp, flag_values.dtype)}


def inpainter_flags_problem(
    flag_values: flags.FlagValues, mask: MaskOptions | None = None
) -> str | None:
    """Why `define_inpainter_flags`'s flags (and `mask`, an `inference.MaskOptions`) cannot work
    together (`inference.check_options`), or None."""
    from deepgin_jax.inference import check_options

    try:
        check_options(inpaint_options(flag_values), mask)
    except ValueError as e:
        return str(e)
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


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: unwinds the command as Ctrl-C's KeyboardInterrupt does (and,
    like it, is not caught by `except Exception`)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_unwind() -> Iterator[None]:
    """Inside, SIGTERM and SIGHUP raise `Terminated` in the main thread (a second one while
    that unwinds is ignored, so that clean-up code is not cut short); the previous handlers
    are restored after."""
    raised = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise Terminated(signum)

    if threading.current_thread() is not threading.main_thread():  # only it may set handlers
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in UNWINDING_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def one_line(error: object) -> str:
    """An error (or a message) on one line (an error's type where its message is empty)."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


def wants_traceback() -> bool:
    """Whether a user's error is logged with its traceback: `-v` (verbosity >= 1), or
    DEEPGIN_TRACEBACK set to anything but 0."""
    return logging.get_verbosity() >= logging.DEBUG or os.environ.get(
        TRACEBACK_ENV_VAR, "0"
    ) not in ("", "0")


def user_failure(error: BaseException, message: str | None = None) -> int:
    """Logs `message` (default: the error's own) as one line, with the error's traceback when
    `wants_traceback()`, and returns EXIT_USAGE."""
    logging.error("%s", one_line(message if message is not None else error))
    if wants_traceback():
        logging.error("Traceback:", exc_info=error)
    return EXIT_USAGE


def guarded(main: Callable[[Sequence[str]], Any]) -> Callable[[Sequence[str]], Any]:
    """`main` with `USER_ERRORS` reported by `user_failure` and SIGINT / SIGTERM / SIGHUP
    unwinding it (atomic writers remove their temporary files) to exit status 128 + N."""

    def guarded_main(argv: Sequence[str]) -> Any:
        try:
            quiet_backend_probes()
            if "xla_cache" in flags.FLAGS:
                enable_compilation_cache(flags.FLAGS.xla_cache)
            with signals_unwind():
                return main(argv)
        except KeyboardInterrupt as e:
            signum = getattr(e, "signum", signal.SIGINT)
            logging.error("Stopped by %s.", signal.Signals(signum).name)
            return 128 + signum
        except app.UsageError as e:
            logging.error("%s (see --help)", one_line(e))
            return EXIT_USAGE
        except USER_ERRORS as e:
            return user_failure(e)

    return guarded_main


def enable_compilation_cache(setting: str | None) -> None:
    """`compile_cache.enable(setting)`; a folder that cannot be created is a warning, and the
    command goes on without the cache."""
    from deepgin_jax import compile_cache

    try:
        folder = compile_cache.enable(setting)
    except OSError as e:
        logging.warning("Compilation cache off: %s (see --xla_cache)", one_line(e))
        compile_cache.enable("off")
        return
    logging.debug("Compilation cache: %s", folder or "off")


def one_blas_thread() -> None:
    """NumPy's and SciPy's OpenBLAS each keep a thread per core that busy-waits between calls.
    Inference gives them small matrices (the detail transfer's distances, SuperLU's supernodes)
    while XLA's threads and the blend's factorisation thread want the cores: with one BLAS
    thread each, a 2560x1600 `inpaint` took 4.5-5.3 s of CPU against 5.1-6.3 s (3 processes
    each, in turns, on busy cores; `OPENBLAS_NUM_THREADS=1` against none, /usr/bin/time).

    threadpoolctl limits the libraries loaded already (NumPy's); OpenBLAS reads
    `OPENBLAS_NUM_THREADS` when it is loaded, which for SciPy's copy is later, at the first use
    of `scipy.linalg` (JAX's lowering of an exported program on CPUs initialises its LAPACK
    kernels from there). Set, it spares that load the start of a thread per core: a later
    `inpaint` process on a 2560x1600 photo took 3.6-3.9 s of CPU against 4.2-5.2 s (4 each, in
    turns, idle cores)."""
    from threadpoolctl import threadpool_limits

    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    threadpool_limits(1, user_api="blas")


def no_huge_page_advice() -> None:
    """NumPy asks the kernel for transparent huge pages for every large array; where the
    kernel then compacts memory on the first touch of each (defrag "madvise", a common
    default), a command that allocates its arrays once pays for it: 0.97 s of CPU for the
    first call of the detail transfer's `phase_neutral` on a 2560x1600 photo against 0.33 s
    without (and 0.35 s for its second call either way); the process's system time fell from
    1.2-2.1 s to 0.9-1.1 s (3 processes each, in turns, `NUMPY_MADVISE_HUGEPAGE=0` against
    none, idle cores)."""
    from numpy._core import multiarray

    multiarray._set_madvise_hugepage(False)


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
KEPT_FREE_BYTES = 1 << 30


def reuse_freed_memory(kept: int = KEPT_FREE_BYTES) -> bool:
    """glibc's malloc gives each array above 32 MiB its own mapping and each thread its own
    arena, and returns freed memory to the kernel: every large array of a call is then fresh
    pages that fault on their first touch (an `inpaint` of strokes over 23 % of a 2560x1600
    photo: 1.2-1.4 s of system time in 790,000-810,000 faults, against 0.2-0.5 s in
    110,000-250,000 here). Here the arrays come from one heap that keeps up to `kept` bytes
    (at most 2 GiB) of what was freed, so a call reuses its predecessor's pages. The process's
    memory also stops growing from call to call: 1.02 GB after each of 6 such calls, against
    0.96 GB after the first and 1.45 GB after the sixth with glibc's defaults (threads' arenas
    fragment). Returns whether the allocator took the settings (False off glibc)."""
    if not 0 < kept < 1 << 31:
        raise ValueError(f"kept={kept}: mallopt takes a C int of bytes")
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return all(
        mallopt(parameter, value) == 1
        for parameter, value in (
            (_M_MMAP_THRESHOLD, min(kept, 1 << 30)),
            (_M_TRIM_THRESHOLD, kept),
            (_M_ARENA_MAX, 1),
        )
    )


def quiet_backend_probes() -> None:
    """Below verbosity 1, JAX's INFO lines about backends it looked for and did not find
    (`Unable to initialize backend 'tpu'`) are dropped; its warnings (a GPU it cannot use)
    still show."""
    level = std_logging.NOTSET if logging.get_verbosity() >= logging.DEBUG else std_logging.WARNING
    std_logging.getLogger("jax._src.xla_bridge").setLevel(level)


@contextlib.contextmanager
def logs_above_progress_bars() -> Iterator[None]:
    """Inside, whatever goes to stderr (absl's log lines, Python's warnings) is written with
    `tqdm.write`: above the progress bars, which are drawn again below it instead of being
    broken in two. Create the bars before entering (they keep the real stderr). tqdm's own
    `logging_redirect_tqdm` does not see absl's handler, which is no StreamHandler of the root
    logger."""
    from tqdm.contrib import DummyTqdmFile

    stderr = sys.stderr
    above_bars = DummyTqdmFile(stderr)
    handler = logging.get_absl_handler().python_handler
    handler_stream = handler.stream
    sys.stderr = above_bars
    if handler_stream is stderr:
        handler.stream = above_bars
    try:
        yield
    finally:
        sys.stderr = stderr
        if handler.stream is above_bars:
            handler.stream = handler_stream
        if unfinished := "".join(above_bars._buf):
            stderr.write(unfinished)
        above_bars._buf = []


def expand_verbose(argv: Sequence[str]) -> list[str]:
    """argv with a bare `-v` (no level after it) read as `-v 1`, absl's `--verbosity=1`."""
    result = list(argv)
    for i, arg in enumerate(result):
        following = result[i + 1] if i + 1 < len(result) else ""
        if arg == "-v" and not following.lstrip("-").isdigit():
            result[i] = "--verbosity=1"
    return result


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's flag parsing, with a bad or missing flag reported as one line, exit EXIT_USAGE."""
    try:
        return flags.FLAGS(list(argv))
    except flags.Error as e:
        sys.stderr.write(f"{one_line(e)} (see --help)\n")
        sys.exit(EXIT_USAGE)


def run(main: Callable[[Sequence[str]], Any]) -> None:
    """`absl.app.run(main)` for a command line: `guarded(main)`, flag errors as one line (exit
    EXIT_USAGE), and a bare `-v` accepted.

    The objects that exist when the command starts (the imported modules') and when it ends are
    frozen out of the cyclic garbage collector (`gc.freeze`): they live until the process ends,
    and the collector would otherwise walk them all at every full collection, and again for
    each module the interpreter tears down at exit (0.25-0.3 s of an `inpaint` process's
    last 0.3-0.4 s, after its outputs are written)."""
    gc.freeze()
    try:
        app.run(guarded(main), argv=expand_verbose(sys.argv), flags_parser=parse_flags)
    finally:
        gc.freeze()
