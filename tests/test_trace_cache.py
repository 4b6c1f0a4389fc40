"""The traced generator kept beside the compilation cache (`deepgin_jax.trace_cache`): a later
process runs it without tracing the Flax model, with the same output; a corrupt or stale file is
logged and replaced; nothing is kept while the compilation cache is off."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from deepgin_jax import generator_fields, shipped, trace_cache
from deepgin_jax.inference import network
from deepgin_jax.models import DeepGIN
from tests.conftest import masked_inputs
from tests.inpainting_helpers import tiny_shipped


@pytest.fixture
def traced_folder(tmp_path, monkeypatch):
    """A fresh folder for traced programs, and no forward pass read back yet in this process
    (as in a new process)."""
    folder = tmp_path / "traced"
    monkeypatch.setattr(trace_cache, "folder", lambda: folder)
    monkeypatch.setattr(network, "_READ_BACK", {})
    return folder


def _forward_files(folder):
    return sorted(folder.glob(f"generator_forward-*{trace_cache.EXPORT_SUFFIX}"))


def _refuse_tracing(monkeypatch):
    def traced(*args, **kwargs):
        raise AssertionError("the generator was traced")

    monkeypatch.setattr(DeepGIN, "__call__", traced)


def test_few_calls_compiles_the_kept_program_with_its_options_and_gives_the_same_output(
    tiny_generator, traced_folder, monkeypatch
):
    model, variables = tiny_generator
    masked, mask = (np.asarray(x) for x in masked_inputs(1, 32, 32))
    plain = np.asarray(network.GeneratorForward(model, variables)(masked, mask))
    few = network.GeneratorForward(model, variables, few_calls=True)
    np.testing.assert_allclose(np.asarray(few(masked, mask)), plain, atol=1e-5)
    assert len(_forward_files(traced_folder)) == 1  # one traced program for both
    options = {key[1] for key in network._READ_BACK}
    assert options == {(), network.FEW_CALLS_CPU_OPTIONS}
    assert network.FEW_CALLS_CPU_OPTIONS == (("xla_cpu_experimental_ynn_fusion_type", ""),)
    # Without the cache folder, traced in the process with the same options.
    monkeypatch.setattr(trace_cache, "folder", lambda: None)
    np.testing.assert_allclose(np.asarray(few(masked, mask)), plain, atol=1e-5)
    assert set(network._WITH_OPTIONS) == {network.FEW_CALLS_CPU_OPTIONS}


def test_a_kept_forward_pass_runs_without_tracing_and_gives_the_same_output(
    tiny_generator, traced_folder, monkeypatch
):
    model, variables = tiny_generator
    masked, mask = (np.asarray(x) for x in masked_inputs(1, 32, 32))
    traced = np.asarray(network._reconstruct(model, variables, masked, mask))
    first = np.asarray(network.GeneratorForward(model, variables)(masked, mask))
    np.testing.assert_array_equal(first, traced)
    [kept] = _forward_files(traced_folder)
    written = kept.stat().st_mtime_ns
    monkeypatch.setattr(network, "_READ_BACK", {})  # a new process
    with monkeypatch.context() as patch:
        _refuse_tracing(patch)
        again = np.asarray(network.GeneratorForward(model, variables)(masked, mask))
    np.testing.assert_array_equal(again, traced)
    assert kept.stat().st_mtime_ns == written
    # Another input shape is another program.
    network.GeneratorForward(model, variables)(*(np.asarray(x) for x in masked_inputs(2, 32, 32)))
    assert len(_forward_files(traced_folder)) == 2


@pytest.mark.parametrize("content", [b"", b"not a program", "stale"])
def test_a_corrupt_or_stale_kept_program_is_logged_and_replaced(
    tiny_generator, traced_folder, monkeypatch, caplog, content
):
    model, variables = tiny_generator
    masked, mask = (np.asarray(x) for x in masked_inputs(1, 32, 32))
    expected = np.asarray(network._reconstruct(model, variables, masked, mask))
    network.GeneratorForward(model, variables)(masked, mask)
    [kept] = _forward_files(traced_folder)
    if content == "stale":  # a readable program of another input signature
        network.GeneratorForward(model, variables)(masked[:, :16, :16], mask[:, :16, :16])
        other = next(p for p in _forward_files(traced_folder) if p != kept)
        content = other.read_bytes()
    kept.write_bytes(content)
    monkeypatch.setattr(network, "_READ_BACK", {})
    with caplog.at_level(logging.WARNING):
        output = np.asarray(network.GeneratorForward(model, variables)(masked, mask))
    np.testing.assert_array_equal(output, expected)
    assert f"Ignoring the traced program {kept}" in caplog.text
    assert kept.read_bytes() != content  # replaced by the program traced again
    monkeypatch.setattr(network, "_READ_BACK", {})
    with monkeypatch.context() as patch:
        _refuse_tracing(patch)
        network.GeneratorForward(model, variables)(masked, mask)


def test_nothing_is_kept_while_the_compilation_cache_is_off(tiny_generator, tmp_path):
    model, variables = tiny_generator
    masked, mask = (np.asarray(x) for x in masked_inputs(1, 24, 24))
    enabled = jax.config.jax_enable_compilation_cache
    folder = jax.config.jax_compilation_cache_dir
    try:
        jax.config.update("jax_compilation_cache_dir", str(tmp_path / "cache"))
        assert trace_cache.folder() == tmp_path / "cache" / trace_cache.FOLDER
        jax.config.update("jax_compilation_cache_dir", "gs://bucket/cache")
        assert trace_cache.folder() is None
        jax.config.update("jax_compilation_cache_dir", str(tmp_path / "cache"))
        jax.config.update("jax_enable_compilation_cache", False)
        assert trace_cache.folder() is None
        output = network.GeneratorForward(model, variables)(masked, mask)
    finally:
        jax.config.update("jax_enable_compilation_cache", enabled)
        jax.config.update("jax_compilation_cache_dir", folder)
    np.testing.assert_array_equal(
        np.asarray(output), np.asarray(network._reconstruct(model, variables, masked, mask))
    )
    assert not (tmp_path / "cache").exists()


def test_parameter_shapes_are_kept_and_a_wrong_kept_copy_refuses_nothing(
    tiny_generator, traced_folder, monkeypatch
):
    model, variables = tiny_generator
    params = variables["params"]
    shipped._check_fits(model, params, traced_folder / "weights.npz")
    [kept] = traced_folder.glob(f"generator_parameters-*{trace_cache.JSON_SUFFIX}")
    shapes = shipped.parameter_shapes(model)
    flat = traverse_util.flatten_dict(params, sep="/")
    assert shapes == {path: leaf.shape for path, leaf in flat.items()}
    with monkeypatch.context() as patch:
        _refuse_tracing(patch)
        assert shipped.parameter_shapes(model) == shapes  # read back, not traced
    for wrong in ('{"value": 5}', "{", json.dumps({"value": {"a": [1]}})):
        kept.write_text(wrong)
        shipped._check_fits(model, params, traced_folder / "weights.npz")
        assert shipped.parameter_shapes(model) == shapes
    with pytest.raises(shipped.ShippedWeightsError, match="does not fit"):
        shipped._check_fits(model, {"params": params}, traced_folder / "weights.npz")


def test_building_a_forward_pass_compiles_nothing(caplog):
    # Parameters of shapes no other test uses, so that nothing was compiled for them before.
    variables = {"params": {"w": np.ones((5, 11, 17), np.float32), "b": np.zeros(23, np.float32)}}
    with caplog.at_level(logging.DEBUG), jax.log_compiles():
        forward = network.GeneratorForward(DeepGIN(base_features=16), variables)
    assert "Finished XLA compilation" not in caplog.text
    assert all(isinstance(v, jax.Array) for v in jax.tree.leaves(forward._variables))


def test_a_forward_pass_that_cannot_be_exported_runs_traced(
    tiny_generator, traced_folder, monkeypatch, caplog
):
    model, variables = tiny_generator
    masked, mask = (np.asarray(x) for x in masked_inputs(1, 32, 32))

    def refuse(*args, **kwargs):
        raise ValueError("a custom call that cannot be serialized")

    monkeypatch.setattr(jax.export, "export", refuse)
    monkeypatch.setattr(network, "_NOT_EXPORTABLE", set())
    with caplog.at_level(logging.WARNING):
        output = network.GeneratorForward(model, variables)(masked, mask)
    assert "cannot keep it (a custom call that cannot be serialized)" in caplog.text
    np.testing.assert_array_equal(
        np.asarray(output), np.asarray(network._reconstruct(model, variables, masked, mask))
    )
    assert not _forward_files(traced_folder)


def test_float64_inputs_read_back_the_float32_program(tiny_generator, traced_folder, monkeypatch):
    model, variables = tiny_generator
    masked, mask = (np.asarray(x, np.float64) for x in masked_inputs(1, 16, 16))
    network.GeneratorForward(model, variables)(masked, mask)
    [kept] = _forward_files(traced_folder)
    written = kept.stat().st_mtime_ns
    monkeypatch.setattr(network, "_READ_BACK", {})
    with monkeypatch.context() as patch:
        _refuse_tracing(patch)
        network.GeneratorForward(model, variables)(masked, mask)
        network.GeneratorForward(model, variables)(masked.astype(np.float32), mask)
    assert kept.stat().st_mtime_ns == written


def test_a_generator_given_by_its_fields_is_built_only_to_be_traced(
    tiny_generator, traced_folder, monkeypatch
):
    model, variables = tiny_generator
    fields = dict(trace_cache.module_fields(model))
    masked, mask = (np.asarray(x) for x in masked_inputs(1, 32, 32))
    expected = np.asarray(network._reconstruct(model, variables, masked, mask))
    first = network.GeneratorForward(fields, variables)
    np.testing.assert_array_equal(np.asarray(first(masked, mask)), expected)
    assert first._model is not None  # built to be traced
    monkeypatch.setattr(network, "_READ_BACK", {})  # a new process
    later = network.GeneratorForward(fields, variables)
    np.testing.assert_array_equal(np.asarray(later(masked, mask)), expected)
    assert later._model is None
    assert later.model == model  # built when asked for


def test_a_later_process_runs_the_shipped_model_without_importing_flax(tmp_path):
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from deepgin_jax import compile_cache\n"
        "compile_cache.enable()\n"
        "from deepgin_jax.inference import GeneratorForward\n"
        "forward = GeneratorForward.from_checkpoint(None)\n"
        "masked = np.linspace(0, 1, 32 * 32 * 3, dtype=np.float32).reshape(1, 32, 32, 3)\n"
        "mask = np.zeros((1, 32, 32, 1), np.float32)\n"
        "mask[:, 8:24, 8:24] = 1\n"
        "print(float(np.asarray(forward(masked, mask)).sum()), 'flax' in sys.modules)\n"
    )
    environment = {
        **os.environ,
        shipped.ENV_VAR: str(tiny_shipped()),
        "DEEPGIN_XLA_CACHE": str(tmp_path / "cache"),
    }

    def run() -> list[str]:
        result = subprocess.run(
            [sys.executable, "-c", code], env=environment, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    first_sum, first_flax = run()
    later_sum, later_flax = run()
    assert (first_flax, later_flax) == ("True", "False")  # traced, then read back
    assert later_sum == first_sum


def test_the_cards_field_list_is_deepgins():
    names = [field.name for field in dataclasses.fields(DeepGIN)]
    assert [*generator_fields.DEEPGIN_FIELDS, "parent", "name"] == names
