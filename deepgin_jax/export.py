"""Exports the DeepGIN generator for serving: ONNX (through jax2onnx) and StableHLO (`jax.export`).

The exported function is the generator's inference pass with its weights built in:

    masked_image  float32 [N, H, W, 3] in [0, 1], hole pixels set to 1.0
    mask          float32 [N, H, W, 1], 1 = hole, 0 = known
    -> completed  float32 [N, H, W, 3]: the prediction inside the hole, masked_image outside

Only `completed` is exported. The other outputs of `DeepGIN` (the reconstruction before the
final composite, the coarse and the low-resolution predictions) serve training and
diagnostics; inside the hole `completed` is the reconstruction, so an exported model plugs into
`deepgin_jax.inference.Inpainter.from_function` and gives the JAX model's results.

H and W must be multiples of 8 and at least 16 (the refinement encoder halves the image four
times). Photos of other sizes are padded first, as `deepgin_jax.inference` does.

Shapes:
* ONNX: H and W fixed; the batch fixed or symbolic (the input dimension "batch"). jax2onnx
  cannot express "a multiple of 8" for a spatial dimension, so ONNX has no symbolic H and W.
* StableHLO: batch, H and W each fixed or symbolic. A symbolic height is declared as `8*h`
  with the constraint `h >= 2` (the width as `8*w`, `w >= 2`): the artifact accepts exactly
  the multiples of 8 from 16 up, and calling it with another size raises an error that says
  the size does not divide.

Both files hold the weights (the ONNX file without external data) and are written atomically.
Self-attention is exported with its XLA implementation, which every backend can run.
"""

from __future__ import annotations

import contextlib
import logging as std_logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from deepgin_jax import cli, shipped
from deepgin_jax.atomic import atomic_write
from deepgin_jax.checkpointing import CheckpointNotFoundError
from deepgin_jax.models.generator import DeepGIN

FORMATS = ("onnx", "stablehlo")
SIZE_MULTIPLE = 8
MIN_SIZE = 16
INPUT_NAMES = ("masked_image", "mask")
OUTPUT_NAME = "completed"
ONNX_BATCH_DIM = "batch"
ONNX_OPSET = 23
STABLEHLO_PLATFORMS = ("cpu", "cuda")
_ONNX_MAX_BYTES = 2**31 - 1  # protobuf's limit for one serialised message

Array = jax.Array


class ExportError(ValueError):
    """An export that cannot be done as asked (bad size, missing option, unreadable artifact)."""


# ----------------------------------------------------------------------------------------------
# The exported function and its shapes


def completion_fn(model: DeepGIN, variables: Any) -> Callable[[Array, Array], Array]:
    """(masked_image [N, H, W, 3], mask [N, H, W, 1]) -> completed [N, H, W, 3], weights closed
    over, self-attention on its XLA implementation (portable to every backend)."""
    model = model.clone(attention_impl="xla")
    variables = jax.tree.map(jnp.asarray, variables)

    def complete(masked_image: Array, mask: Array) -> Array:
        return model.apply(variables, masked_image, mask).completed

    return complete


def validate_size(name: str, value: int) -> int:
    """`value` if it is a multiple of 8 and at least 16; else ExportError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ExportError(f"{name} must be an integer, got {value!r}")
    if value < MIN_SIZE or value % SIZE_MULTIPLE:
        raise ExportError(
            f"{name} must be a multiple of {SIZE_MULTIPLE} and at least {MIN_SIZE}, got {value}"
        )
    return int(value)


def _validate_batch(batch: int | None) -> int | None:
    if batch is not None and (isinstance(batch, bool) or batch < 1):
        raise ExportError(f"batch must be a positive integer or None (symbolic), got {batch!r}")
    return batch


def _input_specs(dims: Sequence[Any]) -> list[jax.ShapeDtypeStruct]:
    """ShapeDtypeStructs of (masked_image, mask) for [N, H, W] = `dims`."""
    return [
        jax.ShapeDtypeStruct((*dims, 3), jnp.float32),
        jax.ShapeDtypeStruct((*dims, 1), jnp.float32),
    ]


def stablehlo_dims(batch: int | None, height: int | None, width: int | None) -> tuple[Any, ...]:
    """[N, H, W] for `jax.export`: ints, or symbolic `batch`, `8*h` (h >= 2), `8*w` (w >= 2)."""
    _validate_batch(batch)
    parts, constraints = [], []
    parts.append("batch" if batch is None else str(batch))
    for name, symbol, value in (("height", "h", height), ("width", "w", width)):
        if value is None:
            parts.append(f"{SIZE_MULTIPLE}*{symbol}")
            constraints.append(f"{symbol} >= {MIN_SIZE // SIZE_MULTIPLE}")
        else:
            parts.append(str(validate_size(name, value)))
    return tuple(jax.export.symbolic_shape(", ".join(parts), constraints=constraints))


# ----------------------------------------------------------------------------------------------
# ONNX


@contextlib.contextmanager
def _quiet_converter_logs() -> Iterator[None]:
    """jax2onnx warns about its optional example plugins (e.g. Equinox models) while loading,
    and onnx_ir about untyped shape constants; neither concerns this export."""
    loggers = [std_logging.getLogger(n) for n in ("jax2onnx.plugins.plugin_system", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(std_logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def onnx_model(
    model: DeepGIN,
    variables: Any,
    *,
    height: int,
    width: int,
    batch: int | None = 1,
    opset: int = ONNX_OPSET,
) -> Any:
    """The generator as an `onnx.ModelProto` (see the module docstring for the signature).

    Args:
      height, width: the fixed spatial size (multiples of 8, at least 16).
      batch: the fixed batch size, or None for a symbolic "batch" dimension.
      opset: the ONNX opset.
    """
    import onnx
    from jax2onnx import to_onnx

    height, width = validate_size("height", height), validate_size("width", width)
    batch_dim = ONNX_BATCH_DIM if _validate_batch(batch) is None else batch
    with _quiet_converter_logs():
        proto = to_onnx(
            completion_fn(model.clone(crop_padding=False), variables),
            inputs=[(batch_dim, height, width, 3), (batch_dim, height, width, 1)],
            model_name="deepgin",
            opset=opset,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
        )
    proto.doc_string = (
        "DeepGIN inpainting generator. masked_image: float32 [N, H, W, 3] in [0, 1] with hole "
        "pixels set to 1.0; mask: float32 [N, H, W, 1], 1 = hole. completed: float32 "
        "[N, H, W, 3], the prediction inside the hole and masked_image outside."
    )
    onnx.checker.check_model(proto)
    return proto


def export_onnx(
    model: DeepGIN,
    variables: Any,
    output: str | os.PathLike,
    *,
    height: int,
    width: int,
    batch: int | None = 1,
    opset: int = ONNX_OPSET,
) -> Path:
    """Writes the generator as one self-contained ONNX file; returns its path.

    See `onnx_model` for the arguments. Run it with e.g. onnxruntime:
    `session.run(["completed"], {"masked_image": x, "mask": m})`.
    """
    proto = onnx_model(model, variables, height=height, width=width, batch=batch, opset=opset)
    size = proto.ByteSize()
    if size > _ONNX_MAX_BYTES:
        raise ExportError(f"the ONNX model would be {size} bytes, over protobuf's 2 GiB limit")
    output = Path(output)
    with atomic_write(output, "wb") as f:
        f.write(proto.SerializeToString())
    logging.info("Wrote %s (%.1f MB, ONNX opset %d).", output, size / 1e6, opset)
    return output


# ----------------------------------------------------------------------------------------------
# StableHLO


def stablehlo_export(
    model: DeepGIN,
    variables: Any,
    *,
    height: int | None,
    width: int | None,
    batch: int | None = 1,
    platforms: Sequence[str] | None = STABLEHLO_PLATFORMS,
) -> jax.export.Exported:
    """The generator as a `jax.export.Exported` (see the module docstring for the signature).

    Args:
      height, width: fixed sizes (multiples of 8, at least 16), or None for symbolic ones.
      batch: the fixed batch size, or None for a symbolic one.
      platforms: the backends the artifact runs on (one module serves them all); None for
        the backend of this process only.
    """
    dims = stablehlo_dims(batch, height, width)
    exporter = jax.export.export(
        jax.jit(completion_fn(model, variables)),
        platforms=None if platforms is None else tuple(platforms),
    )
    try:
        return exporter(*_input_specs(dims))
    except Exception as e:
        if height is not None and width is not None:
            raise
        raise ExportError(
            f"the generator could not be traced with a symbolic height or width ({e}); "
            "export a fixed size instead"
        ) from e


def export_stablehlo(
    model: DeepGIN,
    variables: Any,
    output: str | os.PathLike,
    *,
    height: int | None,
    width: int | None,
    batch: int | None = 1,
    platforms: Sequence[str] | None = STABLEHLO_PLATFORMS,
) -> Path:
    """Writes the serialised `jax.export.Exported` of the generator; returns its path.

    See `stablehlo_export` for the arguments; read it back with `load_stablehlo`.
    """
    exported = stablehlo_export(
        model, variables, height=height, width=width, batch=batch, platforms=platforms
    )
    data = exported.serialize()
    output = Path(output)
    with atomic_write(output, "wb") as f:
        f.write(data)
    logging.info(
        "Wrote %s (%.1f MB, StableHLO for %s, inputs %s).",
        output,
        len(data) / 1e6,
        ", ".join(exported.platforms),
        ", ".join(str(aval) for aval in exported.in_avals),
    )
    return output


def load_stablehlo(path: str | os.PathLike) -> jax.export.Exported:
    """Reads a file written by `export_stablehlo`.

    `exported.call(masked_image, mask)` runs it (also inside `jax.jit`);
    `Inpainter.from_function(exported.call)` inpaints photos of any size with it.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise ExportError(f"{path}: no such StableHLO file") from e
    except IsADirectoryError as e:
        raise ExportError(f"{path}: is a folder, not a StableHLO file") from e
    try:
        return jax.export.deserialize(bytearray(data))
    except Exception as e:
        raise ExportError(f"{path}: not a serialised jax.export artifact ({e})") from e


# ----------------------------------------------------------------------------------------------
# From a checkpoint (the command line)


def export_checkpoint(
    checkpoint: str | os.PathLike | None,
    output: str | os.PathLike,
    *,
    fmt: str,
    height: int | None,
    width: int | None,
    batch: int | None = 1,
    platforms: Sequence[str] | None = STABLEHLO_PLATFORMS,
    opset: int = ONNX_OPSET,
) -> Path:
    """Loads a generator checkpoint and exports it as `fmt` ("onnx" or "stablehlo").

    `checkpoint`: anything `shipped.load_generator` reads; None = the shipped model.

    `height`, `width` and `batch` set the input shape; None makes a dimension symbolic (ONNX:
    the batch only).
    """
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "onnx" and (height is None or width is None):
        raise ExportError(
            "ONNX export needs a fixed height and width (only the batch can be symbolic)"
        )
    # Check the shape before the (slow) checkpoint restore.
    if height is not None:
        validate_size("height", height)
    if width is not None:
        validate_size("width", width)
    _validate_batch(batch)
    model, variables = shipped.load_generator(checkpoint)
    if checkpoint is not None:
        logging.info("Loaded %s; exporting %s.", checkpoint, fmt)
    if fmt == "onnx":
        return export_onnx(
            model, variables, output, height=height, width=width, batch=batch, opset=opset
        )
    return export_stablehlo(
        model, variables, output, height=height, width=width, batch=batch, platforms=platforms
    )


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The command-line flags (defined only when run as a program, or on `flag_values`)."""
    fv = {"flag_values": flag_values}
    cli.define_checkpoint_flag(flag_values)
    flags.DEFINE_enum("format", None, FORMATS, "Export format.", **fv)
    flags.DEFINE_string("output", None, "File to write (e.g. model.onnx, model.stablehlo).", **fv)
    flags.DEFINE_integer("height", None, "Input height: a multiple of 8, at least 16.", **fv)
    flags.DEFINE_integer("width", None, "Input width: a multiple of 8, at least 16.", **fv)
    flags.DEFINE_integer(
        "batch", 1, "Fixed batch size (ignored with --dynamic).", lower_bound=1, **fv
    )
    flags.DEFINE_bool(
        "dynamic",
        False,
        "Symbolic dimensions: the batch, and for StableHLO also the height and width unless "
        "--height/--width fix them (a symbolic height is 8*h with h >= 2).",
        **fv,
    )
    flags.DEFINE_list(
        "platforms",
        list(STABLEHLO_PLATFORMS),
        "StableHLO only: the backends the artifact runs on (cpu, cuda, rocm, tpu).",
        **fv,
    )
    flags.DEFINE_integer("opset", ONNX_OPSET, "ONNX only: the opset version.", **fv)
    cli.define_compilation_cache_flag(flag_values)
    flags.adopt_module_key_flags(cli, flag_values=flag_values)  # --help lists them here
    flags.mark_flags_as_required(["format", "output"], flag_values=flag_values)


def main(argv: Sequence[str]) -> int:
    cli.reject_arguments(argv)
    f = flags.FLAGS
    if not f.dynamic and (f.height is None or f.width is None):
        raise app.UsageError("give --height and --width, or --dynamic")
    try:
        export_checkpoint(
            f.checkpoint,
            f.output,
            fmt=f.format,
            height=f.height,
            width=f.width,
            batch=None if f.dynamic else f.batch,
            platforms=f.platforms,
            opset=f.opset,
        )
    except CheckpointNotFoundError as e:
        return cli.generator_failure(f.checkpoint, e)
    except ExportError as e:
        return cli.usage_failure("%s", e)
    return cli.EXIT_OK


if __name__ == "__main__":
    define_flags()
    cli.run(main)
