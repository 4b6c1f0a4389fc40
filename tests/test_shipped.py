"""The shipped-model format: round trip, checksum, missing files, and the default model.

The tiny generator runs on the (1, 40, 56) shape only, which the inference and CLI tests share.
"""

from __future__ import annotations

import functools
import json
import logging

import jax
import numpy as np
import pytest

from deepgin_jax import checkpointing, image_io, shipped
from deepgin_jax.data import sample_image_paths
from deepgin_jax.data.transforms import resize_bicubic
from deepgin_jax.inference import GeneratorForward, Inpainter
from deepgin_jax.models.generator import DeepGIN
from tests.conftest import TINY_ARCHITECTURE
from tests.inpainting_helpers import tiny_checkpoint, tiny_shipped

# Largest |shipped model - float32 model| of the reconstruction, on [0, 1] pixels, for the tiny
# test generator (measured: 8.7e-6 from float16 storage, 5.0e-5 from bfloat16). On the trained
# DeepGIN-compact (its step-750 checkpoint) float16 gave 7.8e-4 and bfloat16 5.3e-3.
FLOAT16_TOLERANCE = 1e-4
BFLOAT16_TOLERANCE = 5e-4


def inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A masked image [1, 40, 56, 3] with white holes and its mask [1, 40, 56, 1]."""
    rng = np.random.default_rng(seed)
    image = rng.random((1, 40, 56, 3), dtype=np.float32)
    mask = np.zeros((1, 40, 56, 1), np.float32)
    mask[:, 8:28, 10:40] = 1
    return np.where(mask > 0, np.float32(1), image), mask


@pytest.fixture(scope="module")
def float32_output() -> np.ndarray:
    model, variables = checkpointing.load_generator(tiny_checkpoint())
    return np.asarray(GeneratorForward(model, variables)(*inputs()))


@pytest.fixture
def use_shipped(monkeypatch):
    """Makes the tiny shipped folder the default model."""
    monkeypatch.setenv(shipped.ENV_VAR, str(tiny_shipped()))
    return tiny_shipped()


def test_float16_round_trip_stays_within_tolerance(float32_output):
    directory = tiny_shipped()
    card = json.loads((directory / shipped.CARD_FILE).read_text())
    assert card["storage_dtype"] == "float16"
    assert card["architecture"]["base_features"] == 16
    assert card["name"] == "DeepGIN-tiny" and card["note"] == "test weights"
    assert card["sha256"] == shipped.file_sha256(directory / shipped.WEIGHTS_FILE)
    with np.load(directory / shipped.WEIGHTS_FILE) as data:
        stored = [data[k].dtype for k in data.files if k != "__meta__"]
    assert stored and all(dtype == np.float16 for dtype in stored)

    model, variables = shipped.load_shipped_generator(directory)
    leaves = [np.asarray(x) for x in jax.tree.leaves(variables)]
    assert all(leaf.dtype == np.float32 for leaf in leaves)
    output = np.asarray(GeneratorForward(model, variables)(*inputs()))
    hole = inputs()[1][0, ..., 0] > 0
    assert float32_output[0][hole].std() > 0.01, "the test network's output is too flat"
    error = np.abs(output - float32_output).max()
    assert 0 < error < FLOAT16_TOLERANCE


def test_bfloat16_round_trip_is_further_but_within_its_tolerance(float32_output, tmp_path):
    shipped.write_shipped_weights(tiny_checkpoint(), tmp_path, dtype="bfloat16", card={})
    with np.load(tmp_path / shipped.WEIGHTS_FILE) as data:
        stored = [data[k].dtype for k in data.files if k != "__meta__"]
    assert stored and all(dtype == np.uint16 for dtype in stored)  # bfloat16 bit patterns
    model, variables = shipped.load_shipped_generator(tmp_path)
    output = np.asarray(GeneratorForward(model, variables)(*inputs()))
    float16_model, float16_variables = shipped.load_shipped_generator(tiny_shipped())
    float16_output = np.asarray(GeneratorForward(float16_model, float16_variables)(*inputs()))
    bfloat16_error = np.abs(output - float32_output).max()
    assert bfloat16_error < BFLOAT16_TOLERANCE
    assert np.abs(float16_output - float32_output).max() < bfloat16_error


def test_corrupted_weights_fail_the_checksum_with_a_clear_message(tmp_path):
    shipped.write_shipped_weights(tiny_checkpoint(), tmp_path, card={})
    weights = tmp_path / shipped.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one parameter
    weights.write_bytes(bytes(data))
    with pytest.raises(shipped.ShippedWeightsError) as error:
        shipped.load_shipped_generator(tmp_path)
    message = str(error.value)
    assert str(weights) in message and "fails its checksum" in message
    assert "reinstall" in message and "write_shipped_weights" in message
    with pytest.raises(checkpointing.CheckpointNotFoundError, match="fails its checksum"):
        Inpainter.from_checkpoint(tmp_path)


@pytest.mark.parametrize("missing", [shipped.WEIGHTS_FILE, shipped.CARD_FILE])
def test_missing_shipped_file_is_a_clear_error(tmp_path, monkeypatch, missing):
    for name in (shipped.WEIGHTS_FILE, shipped.CARD_FILE):
        (tmp_path / name).write_bytes((tiny_shipped() / name).read_bytes())
    (tmp_path / missing).unlink()
    monkeypatch.setenv(shipped.ENV_VAR, str(tmp_path))
    with pytest.raises(shipped.ShippedWeightsError) as error:
        Inpainter()
    message = str(error.value)
    assert "shipped DeepGIN-compact weights are missing" in message
    assert str(tmp_path / missing) in message
    assert "--checkpoint" in message and shipped.ENV_VAR in message


def test_package_folder_is_the_default_and_the_variable_overrides_it(monkeypatch):
    monkeypatch.delenv(shipped.ENV_VAR, raising=False)
    assert shipped.default_dir() == shipped.PACKAGE_DIR
    assert shipped.PACKAGE_DIR.parts[-3:] == ("deepgin_jax", "weights", "compact")
    monkeypatch.setenv(shipped.ENV_VAR, "/somewhere/else")
    assert str(shipped.default_dir()) == "/somewhere/else"


def test_default_inpainter_uses_the_shipped_model_and_says_so_once(use_shipped, caplog):
    image = (np.random.default_rng(1).random((37, 53, 3)) * 255).astype(np.uint8)
    mask = np.zeros((37, 53), bool)
    mask[5:20, 10:30] = True
    with caplog.at_level(logging.INFO, logger="absl"):
        result = Inpainter().inpaint(image, mask)
    notes = [r.getMessage() for r in caplog.records if "using the shipped" in r.getMessage()]
    assert len(notes) == 1
    assert "DeepGIN-tiny" in notes[0] and "sha256" in notes[0]
    by_path = Inpainter.from_checkpoint(use_shipped).inpaint(image, mask)
    np.testing.assert_array_equal(result, by_path)
    from_file = Inpainter.from_checkpoint(use_shipped / shipped.WEIGHTS_FILE).inpaint(image, mask)
    np.testing.assert_array_equal(result, from_file)
    float32 = Inpainter.from_checkpoint(tiny_checkpoint()).inpaint(image, mask)
    assert np.abs(result.astype(int) - float32.astype(int)).max() <= 1
    assert (result[mask] != image[mask]).any()
    np.testing.assert_array_equal(result[~mask], image[~mask])


def test_card_cannot_replace_the_formats_own_keys(tmp_path):
    with pytest.raises(ValueError, match="sha256"):
        shipped.write_shipped_weights(tiny_checkpoint(), tmp_path, card={"sha256": "0" * 64})
    with pytest.raises(ValueError, match="dtype"):
        shipped.write_shipped_weights(tiny_checkpoint(), tmp_path, dtype="int8", card={})


def test_the_package_model_verifies_and_fills_holes_from_their_surroundings(monkeypatch):
    monkeypatch.delenv(shipped.ENV_VAR, raising=False)
    card = shipped.verify()  # the sha256 of the package's own generator.npz
    assert card["name"] == "DeepGIN-compact" and card["architecture"]["base_features"] == 16
    inpainter = Inpainter()
    hole = np.zeros((128, 128), bool)
    hole[40:80, 30:90] = True
    errors, flat_errors = [], []
    for path in sample_image_paths():  # each photo's top-left square at the serving size
        image = image_io.read_rgb(path)
        side = min(image.shape[:2])
        photo = resize_bicubic(image[:side, :side], 128, 128)
        filled = inpainter.inpaint(photo, hole)
        np.testing.assert_array_equal(filled[~hole], photo[~hole])
        errors.append(np.abs(filled[hole].astype(float) - photo[hole]).mean())
        flat_errors.append(np.abs(photo[~hole].mean(axis=0) - photo[hole]).mean())
    # Better than filling with the known pixels' mean colour (measured: 0.69 of its error).
    assert sum(errors) < 0.8 * sum(flat_errors), (errors, flat_errors)


def test_averaged_checkpoints_ship_their_mean_and_refuse_other_architectures(tmp_path):
    _, variables = checkpointing.load_generator(tiny_checkpoint())
    shifted = jax.tree.map(lambda a: np.asarray(a) + 0.5, variables)
    checkpointing.save_generator(tmp_path / "shifted", shifted, TINY_ARCHITECTURE)
    card = shipped.write_shipped_weights(
        [tiny_checkpoint(), tmp_path / "shifted"], tmp_path / "mean", card={}
    )
    assert card["averaged_steps"] == [None, None]  # converted models record no step
    _, mean = shipped.load_shipped_generator(tmp_path / "mean")
    expected = jax.tree.map(lambda a: np.asarray(a) + 0.25, variables)
    for got, want in zip(jax.tree.leaves(mean), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)  # float16 storage
    narrow = DeepGIN(base_features=8)
    shapes = jax.eval_shape(
        narrow.init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, 16, 16, 3), np.float32),
        jax.ShapeDtypeStruct((1, 16, 16, 1), np.float32),
    )
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    checkpointing.save_generator(tmp_path / "narrow", zeros, {"base_features": 8})
    with pytest.raises(ValueError, match="architecture differs"):
        shipped.average_generators([tiny_checkpoint(), tmp_path / "narrow"])
    with pytest.raises(ValueError, match="at least one"):
        shipped.average_generators([])
    # Weighted: 0.2 of the first and 0.8 of the shifted one (an interpolation).
    card = shipped.write_shipped_weights(
        [tiny_checkpoint(), tmp_path / "shifted"],
        tmp_path / "mix",
        card={},
        averaging_weights=[1, 4],
    )
    assert card["averaging_weights"] == [0.2, 0.8]
    _, mix = shipped.load_shipped_generator(tmp_path / "mix")
    expected = jax.tree.map(lambda a: np.asarray(a) + 0.4, variables)
    for got, want in zip(jax.tree.leaves(mix), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    for weights in ([1.0], [1.0, 0.0]):
        with pytest.raises(ValueError, match="one positive weight per checkpoint"):
            shipped.average_generators([tiny_checkpoint(), tmp_path / "shifted"], weights)
    with pytest.raises(ValueError, match="need a list"):
        shipped.write_shipped_weights(
            tiny_checkpoint(), tmp_path / "x", card={}, averaging_weights=[1]
        )


def test_the_cards_inference_settings_are_the_inpainters_defaults(tmp_path, monkeypatch):
    settings = {"upscale": 1.5, "blend": "poisson"}
    shipped.write_shipped_weights(tiny_checkpoint(), tmp_path / "up", card=settings)
    assert shipped.recommended_inference(tmp_path / "up") == settings
    inpainter = Inpainter.from_checkpoint(tmp_path / "up")
    assert (inpainter.upscale, inpainter.blend) == (1.5, "poisson")
    inpainter = Inpainter.from_checkpoint(tmp_path / "up", upscale=1.0, blend="paste")
    assert (inpainter.upscale, inpainter.blend) == (1.0, "paste")
    plain = {"upscale": 1.0, "blend": "paste"}
    assert shipped.recommended_inference(tiny_shipped()) == plain  # a card without the keys
    assert shipped.recommended_inference(tiny_checkpoint()) == plain  # not a shipped folder
    inpainter = Inpainter.from_checkpoint(tiny_checkpoint())
    assert (inpainter.upscale, inpainter.blend) == (1.0, "paste")
    with pytest.raises(ValueError, match="upscale must be a number >= 1"):
        shipped.write_shipped_weights(tiny_checkpoint(), tmp_path / "bad", card={"upscale": 0})
    with pytest.raises(ValueError, match="blend must be one of"):
        shipped.write_shipped_weights(tiny_checkpoint(), tmp_path / "bad", card={"blend": "x"})
    card_path = tmp_path / "up" / shipped.CARD_FILE
    card = json.loads(card_path.read_text())
    card_path.write_text(json.dumps({**card, "upscale": "2"}))
    with pytest.raises(shipped.ShippedWeightsError, match="upscale must be a number >= 1"):
        Inpainter.from_checkpoint(tmp_path / "up")
    card_path.write_text(json.dumps({**card, "blend": "feather"}))
    with pytest.raises(shipped.ShippedWeightsError, match="blend must be one of"):
        Inpainter.from_checkpoint(tmp_path / "up")
    monkeypatch.delenv(shipped.ENV_VAR, raising=False)
    assert shipped.recommended_inference() == {"upscale": 2.0, "blend": "poisson"}


def test_init_from_accepts_every_generator_that_checkpoint_accepts(tmp_path, monkeypatch):
    """One loader (`load_any_generator`) for --checkpoint, `Inpainter.from_checkpoint` and
    `config.init_from`: a converted model, a training step, its checkpoints/ folder, its
    workdir, a shipped folder, its npz and json, and the name "shipped"."""
    from deepgin_jax import config as config_lib
    from deepgin_jax import sharding, train_lib, train_state

    monkeypatch.setenv(shipped.ENV_VAR, str(tiny_shipped()))
    _, variables = checkpointing.load_generator(tiny_checkpoint())
    step = tmp_path / "run" / "checkpoints" / "3"
    checkpointing.save_generator(step, variables, TINY_ARCHITECTURE)
    _, shipped_variables = shipped.load_shipped_generator(tiny_shipped())
    forms = {
        tiny_checkpoint(): variables,
        step: variables,
        step.parent: variables,
        step.parent.parent: variables,
        tiny_shipped(): shipped_variables,
        tiny_shipped() / shipped.WEIGHTS_FILE: shipped_variables,
        tiny_shipped() / shipped.CARD_FILE: shipped_variables,
        "shipped": shipped_variables,
    }
    config = config_lib.apply_variant(config_lib.default_config(), "smoke")
    setup = train_state.build_setup(config)
    mesh = sharding.create_mesh()
    init = functools.partial(train_state.init_train_state, setup, crop_size=64)
    fresh = jax.eval_shape(init, jax.random.key(0))  # the shapes are all _generator_from needs
    for i, (source, expected) in enumerate(forms.items()):
        shipped.check_generator_path(str(source))  # what --checkpoint checks first
        config.init_from = str(source)
        train_lib.preflight(config, str(tmp_path / f"workdir{i}"))
        state = train_lib._generator_from(config, fresh, sharding.replicated(mesh))
        for got, want in zip(
            jax.tree.leaves(state.g_params), jax.tree.leaves(expected["params"]), strict=True
        ):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=str(source))
    assert Inpainter.from_checkpoint("shipped").model.base_features == 16
    narrow = config_lib.apply_variant(config_lib.default_config(), "smoke")
    narrow.model.base_features = 8
    narrow.init_from = str(tiny_shipped())
    init = functools.partial(
        train_state.init_train_state, train_state.build_setup(narrow), crop_size=64
    )
    with pytest.raises(ValueError, match=r"another architecture .* 'base_features': 16"):
        train_lib._generator_from(
            narrow, jax.eval_shape(init, jax.random.key(0)), sharding.replicated(mesh)
        )
    config.init_from = str(tmp_path / "absent")
    with pytest.raises(train_lib.CannotStartError, match=r"init_from=.*absent.*does not exist"):
        train_lib.preflight(config, str(tmp_path / "workdir"))


def test_weight_trees_flatten_as_flax_does_and_back():
    from flax import traverse_util
    from flax.core import FrozenDict

    from deepgin_jax.weights_io import flatten, unflatten

    tree = {
        "conv": {"kernel": np.ones((3, 3, 1, 2)), "bias": np.zeros(2)},
        "frozen": FrozenDict({"scale": np.ones(2)}),
        "empty": {},
        "top": np.arange(3),
    }
    flat = flatten(tree)
    assert flat.keys() == traverse_util.flatten_dict(tree, sep="/").keys()
    assert sorted(flat) == ["conv/bias", "conv/kernel", "frozen/scale", "top"]
    back = unflatten(flat)
    assert back.keys() == {"conv", "frozen", "top"}
    np.testing.assert_array_equal(back["conv"]["kernel"], tree["conv"]["kernel"])
    np.testing.assert_array_equal(back["frozen"]["scale"], tree["frozen"]["scale"])
