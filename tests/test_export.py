"""ONNX and StableHLO export: the exported files reproduce the JAX generator."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from deepgin_jax import export, shipped
from deepgin_jax.checkpointing import CheckpointNotFoundError, load_generator, save_generator
from deepgin_jax.inference import Inpainter
from tests.conftest import TINY_ARCHITECTURE, masked_inputs
from tests.inpainting_helpers import tiny_shipped

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("jax2onnx")

REPO = Path(__file__).resolve().parent.parent
HEIGHT, WIDTH = 64, 48
TOLERANCE = 1e-4  # float32 reassociation between XLA and ONNX Runtime


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_generator) -> Path:
    """A tiny generator checkpoint, freshly initialised: its output varies inside the holes
    (the `reference` fixture checks it), so the comparisons mean something."""
    _, variables = tiny_generator
    params = variables["params"]
    directory = tmp_path_factory.mktemp("export") / "tiny"
    save_generator(directory, {"params": params}, TINY_ARCHITECTURE)
    return directory


@pytest.fixture(scope="module")
def generator(checkpoint):
    return load_generator(checkpoint)


@pytest.fixture(scope="module")
def reference(generator):
    """The JAX model's `completed` on a batch of 2 at HEIGHT x WIDTH: (masked, mask, completed)."""
    complete = jax.jit(export.completion_fn(*generator))
    masked, mask = masked_inputs(2, HEIGHT, WIDTH, seed=1)
    completed = np.asarray(complete(masked, mask))
    hole = np.asarray(mask)[..., 0] > 0
    assert completed[hole].std() > 0.01, "the test network's output is too flat to compare"
    return np.asarray(masked), np.asarray(mask), completed


@pytest.fixture(scope="module")
def dynamic_exported(generator, tmp_path_factory):
    """The generator exported with symbolic batch, height and width, read back from its file."""
    output = tmp_path_factory.mktemp("stablehlo") / "dynamic.stablehlo"
    path = export.export_stablehlo(*generator, output, height=None, width=None, batch=None)
    return export.load_stablehlo(path)


def test_onnx_with_symbolic_batch_matches_jax(checkpoint, reference, tmp_path):
    masked, mask, completed = reference
    path = export.export_checkpoint(
        checkpoint, tmp_path / "deepgin.onnx", fmt="onnx", height=HEIGHT, width=WIDTH, batch=None
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert inputs == {
        "masked_image": ["batch", HEIGHT, WIDTH, 3],
        "mask": ["batch", HEIGHT, WIDTH, 1],
    }
    assert [o.name for o in session.get_outputs()] == ["completed"]

    for batch in (1, 2):
        [out] = session.run(["completed"], {"masked_image": masked[:batch], "mask": mask[:batch]})
        assert out.shape == (batch, HEIGHT, WIDTH, 3)
        np.testing.assert_allclose(out, completed[:batch], atol=TOLERANCE, rtol=0)
    known = mask[..., 0] == 0
    np.testing.assert_array_equal(out[known], masked[known])


def test_stablehlo_fixed_shape_matches_jax(generator, reference, tmp_path):
    masked, mask, completed = reference
    path = export.export_stablehlo(
        *generator, tmp_path / "fixed.stablehlo", height=HEIGHT, width=WIDTH, batch=2
    )
    exported = export.load_stablehlo(path)
    assert [a.shape for a in exported.in_avals] == [(2, HEIGHT, WIDTH, 3), (2, HEIGHT, WIDTH, 1)]
    assert set(exported.platforms) == {"cpu", "cuda"}
    out = np.asarray(exported.call(masked, mask))
    np.testing.assert_allclose(out, completed, atol=TOLERANCE, rtol=0)


def test_stablehlo_symbolic_shape_runs_at_two_sizes(generator, reference, dynamic_exported):
    exported = dynamic_exported
    assert str(exported.in_avals[0]) == "float32[batch,8*h,8*w,3]"
    masked, mask, completed = reference
    np.testing.assert_allclose(
        np.asarray(exported.call(masked, mask)), completed, atol=TOLERANCE, rtol=0
    )
    # 16 rows: the 1/16 feature map is a single row, the smallest size the network takes.
    small_masked, small_mask = masked_inputs(1, 16, 40, seed=2)
    small_reference = jax.jit(export.completion_fn(*generator))(small_masked, small_mask)
    np.testing.assert_allclose(
        np.asarray(exported.call(small_masked, small_mask)),
        np.asarray(small_reference),
        atol=TOLERANCE,
        rtol=0,
    )
    with pytest.raises(ValueError, match="remainder"):
        exported.call(*masked_inputs(1, 36, 40))  # 36 is not a multiple of 8


def test_stablehlo_artifact_serves_the_inpainter(reference, dynamic_exported):
    """An exported model behind `Inpainter.from_function` gives the JAX model's completion."""
    masked, mask, completed = reference
    inpainter = Inpainter.from_function(dynamic_exported.call)
    results = inpainter.inpaint_many(list(masked), list(mask[..., 0] > 0))
    assert inpainter.batch_shapes == {(2, HEIGHT, WIDTH)}
    for result, expected in zip(results, completed, strict=True):
        assert result.shape == expected.shape
        np.testing.assert_allclose(result, np.clip(expected, 0, 1), atol=TOLERANCE, rtol=0)


def test_failed_write_keeps_the_previous_file(generator, tmp_path, monkeypatch):
    output = tmp_path / "model.stablehlo"
    output.write_bytes(b"previous export")

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        export.export_stablehlo(*generator, output, height=16, width=16)
    assert output.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.stablehlo"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fmt": "stablehlo", "height": 20, "width": 16}, "height must be a multiple of 8"),
        ({"fmt": "stablehlo", "height": 16, "width": 8}, "width must be .* at least 16"),
        ({"fmt": "stablehlo", "height": 16, "width": 16, "batch": 0}, "batch must be"),
        ({"fmt": "onnx", "height": None, "width": 64}, "ONNX export needs a fixed height"),
        ({"fmt": "tflite", "height": 16, "width": 16}, "format must be one of"),
    ],
)
def test_bad_options_are_refused_before_writing(checkpoint, tmp_path, options, message):
    output = tmp_path / "out"
    with pytest.raises(export.ExportError, match=message):
        export.export_checkpoint(checkpoint, output, **options)
    assert not output.exists()


def test_missing_checkpoint_is_reported(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        export.export_checkpoint(
            tmp_path / "nowhere", tmp_path / "out", fmt="stablehlo", height=16, width=16
        )


def test_without_checkpoint_the_shipped_model_is_exported(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv(shipped.ENV_VAR, str(tiny_shipped()))
    output = tmp_path / "shipped.stablehlo"
    with caplog.at_level(logging.INFO, logger="absl"):
        export.export_checkpoint(None, output, fmt="stablehlo", height=HEIGHT, width=WIDTH)
    assert sum("using the shipped" in r.getMessage() for r in caplog.records) == 1
    masked, mask = masked_inputs(1, HEIGHT, WIDTH, seed=2)
    completed = np.asarray(export.load_stablehlo(output).call(masked, mask))
    model, variables = shipped.load_shipped_generator(tiny_shipped())
    expected = np.asarray(jax.jit(export.completion_fn(model, variables))(masked, mask))
    np.testing.assert_allclose(completed, expected, atol=TOLERANCE)


def test_cli_reports_missing_shipped_weights(tmp_path, monkeypatch):
    monkeypatch.setenv(shipped.ENV_VAR, str(tmp_path / "no-weights"))
    result = _run_cli("--format=stablehlo", f"--output={tmp_path / 'out'}", "--dynamic")
    assert result.returncode == 2
    assert "shipped DeepGIN-compact weights are missing" in result.stderr
    assert "--checkpoint" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_unreadable_stablehlo_file_is_reported(tmp_path):
    with pytest.raises(export.ExportError, match="no such StableHLO file"):
        export.load_stablehlo(tmp_path / "missing.stablehlo")
    garbage = tmp_path / "garbage.stablehlo"
    garbage.write_bytes(b"not an export")
    with pytest.raises(export.ExportError, match=r"not a serialised jax\.export artifact"):
        export.load_stablehlo(garbage)


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deepgin_jax.export", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_cli_exports_a_dynamic_stablehlo_file(checkpoint, tmp_path):
    output = tmp_path / "cli.stablehlo"
    result = _run_cli(
        f"--checkpoint={checkpoint}", "--format=stablehlo", f"--output={output}", "--dynamic"
    )
    assert result.returncode == 0, result.stderr
    exported = export.load_stablehlo(output)
    assert str(exported.in_avals[1]) == "float32[batch,8*h,8*w,1]"


def test_cli_reports_a_missing_checkpoint(tmp_path):
    result = _run_cli(
        f"--checkpoint={tmp_path / 'nowhere'}",
        "--format=onnx",
        f"--output={tmp_path / 'out.onnx'}",
        "--height=64",
        "--width=64",
    )
    assert result.returncode == 2
    assert "checkpoint path does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.onnx").exists()
