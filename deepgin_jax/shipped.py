"""The generator that ships inside the package (DeepGIN-compact), and the format that carries it.

A shipped model is a folder of two files:

* `generator.npz`: the generator's parameters, one array per leaf under its '/'-joined path
  (`weights_io.save_weights`), stored as float16 (or bfloat16 kept as its uint16 bit pattern);
* `generator.json`: the card: `format`, `format_version`, `architecture` (the `DeepGIN` fields
  the checkpoint recorded), `storage_dtype`, `sha256` and `bytes` of the npz, the source
  checkpoint's step, and whatever the writer's `card` dict adds (name, training data, ...).
  `upscale` (a number >= 1) and `blend` ("paste" or "poisson") keys are the `Inpainter`
  settings this model runs with by default (`recommended_inference`).

`write_shipped_weights(checkpoint, output_dir, card={...})` makes one from any generator checkpoint,
or from the mean of several (`average_generators`: snapshots of one run);
`load_shipped_generator(path)` reads one back as float32 `(model, variables)`, after checking the
npz's sha256 against the card. With no path it reads the package's own model,
`deepgin_jax/weights/compact/`, or the folder named by the environment variable
`DEEPGIN_SHIPPED_WEIGHTS` when that is set (tests and deployments point it elsewhere).

`load_any_generator(source)` is the one loader of every generator a user can name: None or
"shipped" for the shipped default, a shipped folder (or its .npz / .json), and everything
`checkpointing.load_generator` reads (a converted model, a training step, a `checkpoints/`
folder, a training workdir). Every `--checkpoint` flag, `config.init_from` and
`Inpainter.from_checkpoint` go through it.

float16 or bfloat16: float16 keeps 10 mantissa bits against bfloat16's 7, and the generator's
parameters lie far inside float16's range. Measured on a DeepGIN-compact training checkpoint
(step 750, 128x128 photos with a 60x60 hole), the reconstruction differs from the float32
model's by at most 7.8e-4 (0.2 of an 8-bit level; mean 2.6e-4) with float16 and 5.3e-3 (mean
1.2e-3) with bfloat16, for the same 5.4 MB; so float16 is the default.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from deepgin_jax import checkpointing, trace_cache, weights_io
from deepgin_jax.atomic import atomic_write
from deepgin_jax.generator_fields import DEEPGIN_FIELDS
from deepgin_jax.inference.options import PLAIN_SETTINGS, check_settings

if TYPE_CHECKING:  # built only where needed: reading a shipped model imports no Flax
    from deepgin_jax.models.generator import DeepGIN

MODEL_NAME = "DeepGIN-compact"
SHIPPED_NAME = "shipped"  # names the default shipped model wherever a generator is named
ENV_VAR = "DEEPGIN_SHIPPED_WEIGHTS"
PACKAGE_DIR = Path(__file__).resolve().parent / "weights" / "compact"
WEIGHTS_FILE = "generator.npz"
CARD_FILE = "generator.json"
FORMAT = "deepgin-jax shipped generator"
FORMAT_VERSION = 1
STORAGE_DTYPES = ("float16", "bfloat16")
# DeepGIN fields that choose how the network runs, not what it computes: never shipped.
RUNTIME_FIELDS = ("dtype", "attention_impl", "remat")
OWN_CARD_KEYS = (
    "format",
    "format_version",
    "architecture",
    "storage_dtype",
    "parameters",
    "sha256",
    "bytes",
    "checkpoint_step",
    "averaged_steps",
    "averaging_weights",
)


class ShippedWeightsError(checkpointing.CheckpointNotFoundError):
    """The shipped weights are missing, corrupt or unreadable (a `CheckpointNotFoundError`, so
    the command lines report it as they report a bad --checkpoint: one message, exit status 2)."""


# ----------------------------------------------------------------------------------------------
# Where the shipped model is


def default_dir() -> Path:
    """The folder of the default model: $DEEPGIN_SHIPPED_WEIGHTS if set, else the package's."""
    override = os.environ.get(ENV_VAR)
    return Path(override) if override else PACKAGE_DIR


def shipped_dir(path: str | os.PathLike) -> Path | None:
    """The shipped-model folder that `path` names (the folder, or its .npz or .json), or None
    when `path` is something else (e.g. an Orbax checkpoint)."""
    path = Path(path)
    if path.is_file() and path.name in (WEIGHTS_FILE, CARD_FILE):
        return path.parent
    if path.is_dir() and ((path / CARD_FILE).is_file() or (path / WEIGHTS_FILE).is_file()):
        return path
    return None


def _display(directory: Path) -> str:
    """The folder relative to the working directory or the package's parent, if inside."""
    for root in (Path.cwd(), PACKAGE_DIR.parents[2]):
        try:
            return str(directory.resolve().relative_to(root.resolve()))
        except ValueError:
            continue
    return str(directory)


def _missing_message(directory: Path, missing: Path) -> str:
    if os.environ.get(ENV_VAR) and directory == default_dir():
        where = f"the folder {directory}, which ${ENV_VAR} names, holds no complete shipped model"
    elif directory.resolve() == PACKAGE_DIR:
        where = (
            f"the package folder {_display(directory)} holds no complete shipped model; this "
            "copy of the package was built without the trained weights"
        )
    else:
        where = f"{directory} holds no complete shipped model"
    return (
        f"the shipped {MODEL_NAME} weights are missing: {missing} does not exist ({where}). "
        "Pass a generator explicitly: --checkpoint DIR on the command line, "
        "Inpainter.from_checkpoint(DIR) in Python (DIR: a converted model, a training workdir "
        f"or checkpoint, or a shipped-model folder), or set {ENV_VAR} to a folder written by "
        "deepgin_jax.shipped.write_shipped_weights."
    )


# ----------------------------------------------------------------------------------------------
# Reading


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_card(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The card (`generator.json`) of a shipped folder (default: `default_dir()`), after
    checking that both files exist.

    Raises:
      ShippedWeightsError: a file is missing or the card is not a shipped-model card.
    """
    directory = default_dir() if path is None else (shipped_dir(path) or Path(path))
    for name in (CARD_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise ShippedWeightsError(_missing_message(directory, directory / name))
    card_path = directory / CARD_FILE
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as e:
        raise ShippedWeightsError(f"{card_path} is not a readable JSON card: {e}") from e
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise ShippedWeightsError(f"{card_path} is not a {FORMAT!r} card")
    if card.get("format_version") != FORMAT_VERSION:
        raise ShippedWeightsError(
            f"{card_path} has format_version {card.get('format_version')!r}; this version of "
            f"deepgin_jax reads version {FORMAT_VERSION}"
        )
    if problem := _architecture_problem(card.get("architecture")):
        raise ShippedWeightsError(
            f"{card_path}: {problem}; write the folder again with "
            "deepgin_jax.shipped.write_shipped_weights (or reinstall the package)"
        )
    return card


def _architecture_problem(architecture: Any) -> str | None:
    """Why a card's `architecture` cannot be the keyword arguments of `DeepGIN`, or None."""
    if not isinstance(architecture, dict):
        return f"'architecture' must be an object of DeepGIN's fields, got {architecture!r:.60}"
    unknown = sorted(set(architecture) - set(DEEPGIN_FIELDS))
    if unknown:
        return f"'architecture' has fields DeepGIN does not know: {', '.join(unknown)}"
    return None


def verify(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """`read_card`, then the npz's sha256 against the card's; returns the card.

    Raises:
      ShippedWeightsError: a missing file, or a checksum mismatch (naming the file, both
        digests and what to do).
    """
    directory = default_dir() if path is None else (shipped_dir(path) or Path(path))
    card = read_card(directory)
    weights = directory / WEIGHTS_FILE
    actual = file_sha256(weights)
    if actual != card.get("sha256"):
        raise ShippedWeightsError(
            f"{weights} fails its checksum: its sha256 is {actual} but {directory / CARD_FILE} "
            f"records {card.get('sha256')}. The file is corrupt or was replaced; reinstall the "
            "package (pip install --force-reinstall deepgin-jax) or write the folder again "
            "with deepgin_jax.shipped.write_shipped_weights."
        )
    return card


def describe(path: str | os.PathLike | None = None) -> str:
    """'the shipped DeepGIN-compact (deepgin_jax/weights/compact, sha256 0123abcd...)'."""
    directory = default_dir() if path is None else (shipped_dir(path) or Path(path))
    card = read_card(directory)
    name = card.get("name", MODEL_NAME)
    return f"the shipped {name} ({_display(directory)}, sha256 {card['sha256'][:12]}...)"


def recommended_inference(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The card's settings for running the model, `{"upscale": ..., "blend": ...}` (how far
    `Inpainter` enlarges a small image, and how the fill meets the photo; see
    `deepgin_jax.inference`), for a shipped folder or None (the default one); a key the card
    lacks, and anything that is not a shipped folder, gets the `Inpainter`'s plain default
    (`inference.options.PLAIN_SETTINGS`).

    Raises:
      ShippedWeightsError: the card records a value that is not allowed.
    """
    settings = dict(PLAIN_SETTINGS)
    directory = shipped_source(path)
    if directory is None:
        return settings
    card = read_card(directory)
    settings.update({key: card[key] for key in settings if key in card})
    try:
        check_settings(settings)
    except ValueError as e:
        raise ShippedWeightsError(f"{directory / CARD_FILE}: {e}") from e
    return settings


def _to_float32(array: np.ndarray, storage_dtype: str) -> np.ndarray:
    if storage_dtype == "bfloat16":
        return array.view(jnp.bfloat16).astype(np.float32)
    return array.astype(np.float32)


def _architecture(card: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: tuple(v) if isinstance(v, list) else v for k, v in dict(card["architecture"]).items()
    }


def read_shipped_generator(
    path: str | os.PathLike | None = None, **model_overrides: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The generator of a shipped folder as `(fields, {"params": ...})`, float32: `fields` are
    the keyword arguments of its `DeepGIN` (`build_generator` makes it). Reading it imports no
    Flax once the architecture's parameter shapes are kept (`parameter_shapes`).

    path: the folder (or its .npz / .json); None = `default_dir()`, logged once as "using the
    shipped DeepGIN-compact (...)". `model_overrides` change runtime fields (`dtype`,
    `attention_impl`), never the architecture.

    Raises:
      ShippedWeightsError: a missing or corrupt file, or weights that do not fit the recorded
        architecture.
    """
    directory = default_dir() if path is None else (shipped_dir(path) or Path(path))
    card = verify(directory)
    weights = directory / WEIGHTS_FILE
    storage_dtype = card.get("storage_dtype")
    if storage_dtype not in STORAGE_DTYPES:
        raise ShippedWeightsError(f"{directory / CARD_FILE}: unknown storage_dtype {storage_dtype}")
    try:
        stored, _ = weights_io.load_weights(weights)
    except (OSError, ValueError) as e:
        raise ShippedWeightsError(f"{weights} cannot be read: {e}") from e
    params = jax.tree.map(lambda a: _to_float32(a, storage_dtype), stored)
    fields = {**_architecture(card), **model_overrides}
    try:
        _check_fits(fields, params, weights)
    except (TypeError, ValueError) as e:  # a value of the card's that the model refuses
        raise ShippedWeightsError(
            f"{directory / CARD_FILE}: its architecture {card['architecture']} does not build "
            f"a DeepGIN ({e}); write the folder again with "
            "deepgin_jax.shipped.write_shipped_weights"
        ) from e
    if path is None:
        logging.info("No checkpoint given: using %s.", describe(directory))
    return fields, {"params": params}


def build_generator(fields: Mapping[str, Any]) -> DeepGIN:
    """`DeepGIN(**fields)`, importing Flax on first use."""
    from deepgin_jax.models.generator import DeepGIN

    return DeepGIN(**fields)


def load_shipped_generator(
    path: str | os.PathLike | None = None, **model_overrides: Any
) -> tuple[DeepGIN, dict[str, Any]]:
    """`read_shipped_generator` with its `DeepGIN` built: `(model, {"params": ...})`."""
    fields, variables = read_shipped_generator(path, **model_overrides)
    return build_generator(fields), variables


def _flat_shapes(params: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(np.shape(v)) for k, v in weights_io.flatten(params).items()}


def parameter_shapes(
    model: DeepGIN | Mapping[str, Any], *, cached: bool = True
) -> dict[str, tuple[int, ...]]:
    """The shape of each parameter of `model` (a DeepGIN or its fields) by its '/'-joined
    path; traced once per architecture and kept beside the compilation cache while that is
    on (`trace_cache`; `cached=False` traces again and replaces the kept copy)."""
    fields = model if isinstance(model, Mapping) else dict(trace_cache.module_fields(model))

    def trace() -> dict[str, list[int]]:
        network = build_generator(fields) if isinstance(model, Mapping) else model
        image = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
        mask = jax.ShapeDtypeStruct((1, 16, 16, 1), jnp.float32)
        abstract = jax.eval_shape(network.init, jax.random.key(0), image, mask)["params"]
        return {k: list(v) for k, v in _flat_shapes(abstract).items()}

    stem = trace_cache.key("generator_parameters", tuple(sorted(fields.items())))
    shapes = trace_cache.cached_json(stem, trace, read=cached)
    try:
        return {str(k): tuple(int(n) for n in v) for k, v in shapes.items()}
    except (AttributeError, TypeError, ValueError):  # a kept copy that is not shapes
        if not cached:
            raise
        return parameter_shapes(model, cached=False)


def _check_fits(
    model: DeepGIN | Mapping[str, Any], params: Mapping[str, Any], weights: Path
) -> None:
    """ShippedWeightsError unless `params` has exactly the parameter names and shapes of
    `model` (a DeepGIN or its fields)."""
    have = _flat_shapes(params)
    if (want := parameter_shapes(model)) != have:
        want = parameter_shapes(model, cached=False)  # not trusting a kept copy to refuse
    if want != have:
        missing = sorted(set(want) - set(have))[:3]
        extra = sorted(set(have) - set(want))[:3]
        wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])[:3]
        raise ShippedWeightsError(
            f"{weights} does not fit its recorded architecture: missing {missing}, unexpected "
            f"{extra}, wrong shapes {wrong}"
        )


def shipped_source(source: str | os.PathLike | None) -> Path | None:
    """The shipped folder that `source` names: `default_dir()` for None or the name "shipped"
    (`SHIPPED_NAME`; a folder of that name is reached as "./shipped"), the folder of a shipped
    path (`shipped_dir`), or None for anything else (e.g. an Orbax checkpoint)."""
    if source is None or _is_shipped_name(source):
        return default_dir()
    return shipped_dir(source)


def _is_shipped_name(source: str | os.PathLike) -> bool:
    return isinstance(source, str) and source == SHIPPED_NAME


def load_any_generator(
    source: str | os.PathLike | None = None, *, as_fields: bool = False, **model_overrides: Any
) -> tuple[DeepGIN | dict[str, Any], dict[str, Any]]:
    """The one loader of every generator a user can name (`--checkpoint`, `config.init_from`,
    `Inpainter.from_checkpoint`): returns (model, {"params": ...}).

    as_fields: a shipped model comes back as its DeepGIN's fields (`read_shipped_generator`),
    unbuilt, so that running it from traced programs never imports Flax; any other generator
    comes back built.

    source: None or "shipped" = the shipped default (`default_dir()`); a shipped folder or its
    `generator.npz` / `generator.json` (the exported weights); a converted model, a training
    checkpoint step, a `checkpoints/` folder or a training workdir (its latest step; local or
    `gs://...`; `checkpointing.load_generator`). `model_overrides` change runtime fields
    (`dtype`, `attention_impl`), never the architecture.

    Raises:
      CheckpointNotFoundError (or its ShippedWeightsError): nothing usable there.
    """
    read = read_shipped_generator if as_fields else load_shipped_generator
    if source is None or _is_shipped_name(source):
        return read(None, **model_overrides)
    if (folder := shipped_dir(source)) is not None:
        return read(folder, **model_overrides)
    return checkpointing.load_generator(source, **model_overrides)


load_generator = load_any_generator  # its name in earlier versions


def check_generator_path(path: str | os.PathLike | None) -> str:
    """Checks, without loading the weights, that `load_any_generator(path)` can find a
    generator; returns how to name it in a log ("the shipped DeepGIN-compact (...)" or the
    path).

    Raises:
      CheckpointNotFoundError (or its ShippedWeightsError): nothing usable there.
    """
    folder = shipped_source(path)
    if folder is not None:
        read_card(folder)
        return describe(folder)
    checkpointing.resolve_checkpoint(path)
    return str(path)


# ----------------------------------------------------------------------------------------------
# Writing


def _cast(array: np.ndarray, storage_dtype: str, name: str) -> np.ndarray:
    array = np.asarray(array, np.float32)
    if storage_dtype == "float16":
        largest = float(np.max(np.abs(array))) if array.size else 0.0
        if largest > float(np.finfo(np.float16).max):
            raise ValueError(
                f"parameter {name} reaches {largest:g}, beyond float16's range; "
                "use dtype='bfloat16'"
            )
        return array.astype(np.float16)
    return array.astype(jnp.bfloat16).view(np.uint16)


def average_generators(
    paths: Sequence[str | os.PathLike], weights: Sequence[float] | None = None
) -> tuple[DeepGIN, dict[str, Any], list[int | None]]:
    """The mean of the parameters of several checkpoints of one generator (snapshots of one
    run: Polyak averaging; with `weights`, one per path, the weighted mean, e.g. a network
    interpolation between two stages' averages): `(model, {"params": mean}, their training
    steps)`; a step is None for a checkpoint that records none (a converted or shipped model).

    Raises:
      ValueError: no paths, weights that are not one positive number per path, or
        checkpoints of different architectures.
    """
    if not paths:
        raise ValueError("average_generators needs at least one checkpoint")
    if weights is None:
        weights = [1.0] * len(paths)
    if len(weights) != len(paths) or not all(w > 0 for w in weights):
        raise ValueError(
            f"need one positive weight per checkpoint: {len(paths)} checkpoints, weights "
            f"{list(weights)}"
        )
    model, total, steps = None, None, []
    for path, weight in zip(paths, weights, strict=True):
        this_model, variables = load_generator(path)
        if model is not None and this_model != model:
            raise ValueError(f"cannot average {path}: its architecture differs from {paths[0]}'s")
        model = this_model
        params = jax.tree.map(
            lambda a, w=weight: w * np.asarray(a, np.float64), variables["params"]
        )
        total = params if total is None else jax.tree.map(np.add, total, params)
        meta = checkpointing.read_meta(path) if shipped_dir(path) is None else {}
        steps.append(int(meta["step"]) if "step" in meta else None)
    mean = jax.tree.map(lambda a: (a / sum(weights)).astype(np.float32), total)
    return model, {"params": mean}, steps


def write_shipped_weights(
    checkpoint_path: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    dtype: str = "float16",
    card: Mapping[str, Any],
    averaging_weights: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Writes the generator of `checkpoint_path` as a shipped folder; returns the card.

    Args:
      checkpoint_path: anything `checkpointing.load_generator` reads (a training workdir, its
        `checkpoints/` folder, a step folder, a converted model), or a shipped folder; or a
        list of them, whose mean is written (`average_generators`; the card records their
        steps as `averaged_steps`).
      output_dir: the folder to (re)write; for the package's model,
        `deepgin_jax/weights/compact` (`PACKAGE_DIR`).
      dtype: "float16" (the closer one) or "bfloat16" (kept as its uint16 bit pattern).
      card: anything JSON can hold, added to the card (e.g. name, training data, steps,
        licence); it cannot replace the format's own keys.
      averaging_weights: with a list of checkpoints, one positive weight each: their weighted
        mean (the card records them, normalised to sum to 1, as `averaging_weights`).

    Each file is written atomically, the npz first and the card last, so a reader never sees
    a card whose checksum describes a half-written npz.
    """
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {STORAGE_DTYPES}, got {dtype!r}")
    clashes = sorted(set(card) & set(OWN_CARD_KEYS))
    if clashes:
        raise ValueError(f"card keys {clashes} are the format's own; rename them")
    try:
        check_settings(card)
    except ValueError as e:
        raise ValueError(f"card: {e}") from e
    if isinstance(checkpoint_path, (str, os.PathLike)):
        if averaging_weights is not None:
            raise ValueError("averaging_weights need a list of checkpoints to average")
        model, variables = load_generator(checkpoint_path)
        averaged_steps = None
    else:
        model, variables, averaged_steps = average_generators(
            list(checkpoint_path), averaging_weights
        )
        checkpoint_path = list(checkpoint_path)[-1]
    flat = weights_io.flatten(variables["params"])
    stored = {name: _cast(jax.device_get(value), dtype, name) for name, value in flat.items()}
    architecture = {
        field: getattr(model, field)
        for field in model.__dataclass_fields__
        if field not in (*RUNTIME_FIELDS, "parent", "name")
    }
    architecture = {k: list(v) if isinstance(v, tuple) else v for k, v in architecture.items()}
    source_meta: dict[str, Any] = {}
    if shipped_dir(checkpoint_path) is None:
        source_meta = checkpointing.read_meta(checkpoint_path)
    output_dir = Path(output_dir)
    weights = output_dir / WEIGHTS_FILE
    weights_io.save_weights(weights, weights_io.unflatten(stored), {"storage_dtype": dtype})
    own = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "storage_dtype": dtype,
        "parameters": int(sum(a.size for a in stored.values())),
        "sha256": file_sha256(weights),
        "bytes": weights.stat().st_size,
    }
    if "step" in source_meta:
        own["checkpoint_step"] = int(source_meta["step"])
    if averaged_steps is not None:
        own["averaged_steps"] = averaged_steps
    if averaging_weights is not None:
        total = sum(averaging_weights)
        own["averaging_weights"] = [round(w / total, 6) for w in averaging_weights]
    full = {"name": MODEL_NAME, **dict(card), **own}
    with atomic_write(output_dir / CARD_FILE, "w") as f:
        f.write(json.dumps(full, indent=1, sort_keys=False) + "\n")
    logging.info("Wrote %s (%.1f MB, %s) and %s.", weights, own["bytes"] / 1e6, dtype, CARD_FILE)
    return full
