"""Checkpoints that verify themselves: every file's sha256 is recorded once the checkpoint is
final; a truncated, altered or missing file is reported by name; training falls back to the
newest checkpoint that verifies and continues with exactly the losses of an uninterrupted run;
inference refuses. One uninterrupted run (a checkpoint at every step) is the reference; faults
are injected into copies of its workdir, at checkpoints and files drawn with a fixed seed.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deepgin_jax import checkpoint_digests, checkpointing, metric_writers, train_lib
from tests.test_train import REPO, RESUME_REFERENCE_OVERRIDES, losses_by_step, smoke_config

# Two warm-up and four GAN steps (the killed-run test's schedule), a checkpoint at every step.
OVERRIDES = RESUME_REFERENCE_OVERRIDES
LAST_STEP = 6
COMPARED = ("g_loss", "g/coarse_l1", "g/output_l1")
FAULTS = ("truncate", "flip", "delete")


@pytest.fixture
def reference(resume_reference) -> Path:
    """The uninterrupted run's workdir (checkpoints 1 to 6, each with its digests): the
    session's `resume_reference`, which is this module's OVERRIDES."""
    return resume_reference


def step_dir(workdir: Path, step: int) -> Path:
    return workdir / checkpointing.CHECKPOINT_SUBDIR / str(step)


def files_of(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def kind_of(name: str) -> str:
    """A file's kind: its path with content-addressed names (hex) replaced by '*'."""
    return re.sub(r"/[0-9a-f]{16,}$", "/*", name)


def inject(path: Path, fault: str, rng: np.random.Generator) -> None:
    data = path.read_bytes()
    if fault == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif fault == "flip":
        at = int(rng.integers(len(data)))
        path.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :])
    else:
        path.unlink()


def copy_until(reference: Path, destination: Path, last_step: int) -> Path:
    """The reference workdir as a run killed after checkpoint `last_step` leaves it (its
    metrics of later steps included: the resume drops them)."""
    shutil.copytree(reference, destination)
    for step in range(last_step + 1, LAST_STEP + 1):
        shutil.rmtree(step_dir(destination, step))
    return destination


def assert_continues_like(reference: Path, workdir: Path, from_step: int) -> None:
    steps = [r["step"] for r in metric_writers.read_metrics(workdir) if "g_loss" in r]
    assert steps == list(range(1, LAST_STEP + 1)), f"steps recorded: {steps}"
    expected, resumed = losses_by_step(reference), losses_by_step(workdir)
    for step in range(from_step + 1, LAST_STEP + 1):
        for key in COMPARED:
            assert resumed[step][key] == expected[step][key], (step, key)


def test_every_kind_of_checkpoint_file_is_verified(reference, tmp_path):
    rng = np.random.default_rng(0)
    step = int(rng.integers(1, LAST_STEP + 1))
    original = step_dir(reference, step)
    names = files_of(original)
    assert checkpoint_digests.DIGESTS_FILE in names
    checkpoint_digests.verify(original)  # the reference itself verifies
    kinds: dict[str, list[str]] = {}
    for name in names:
        if name != checkpoint_digests.DIGESTS_FILE:
            kinds.setdefault(kind_of(name), []).append(name)
    # Every item of a training checkpoint, its arrays' OCDBT files and Orbax's step metadata.
    assert {"_CHECKPOINT_METADATA", "meta/metadata", "generator/manifest.ocdbt"} <= set(kinds)
    assert "generator/ocdbt.process_0/d/*" in kinds
    assert not any(kind.startswith("data_iter") for kind in kinds)  # the step is the position
    checked = 0
    for kind, members in sorted(kinds.items()):
        name = members[int(rng.integers(len(members)))]
        for fault in FAULTS:
            if fault != "delete" and (original / name).stat().st_size == 0:
                continue
            copy = tmp_path / f"{checked}"
            shutil.copytree(original, copy)
            inject(copy / name, fault, rng)
            with pytest.raises(checkpoint_digests.CorruptFileError) as error:
                checkpoint_digests.verify(copy)
            assert error.value.path == copy / name, (kind, fault, str(error.value))
            checked += 1
    assert checked >= 3 * len(kinds) - 3
    # The record itself: altered, it is named; deleted, the checkpoint reads as one written
    # before digests (unverified).
    copy = tmp_path / "record"
    shutil.copytree(original, copy)
    inject(copy / checkpoint_digests.DIGESTS_FILE, "flip", rng)
    with pytest.raises(checkpoint_digests.CorruptFileError) as error:
        checkpoint_digests.verify(copy)
    assert error.value.path == copy / checkpoint_digests.DIGESTS_FILE
    (copy / checkpoint_digests.DIGESTS_FILE).unlink()
    assert checkpoint_digests.verify(copy) is False


def test_training_falls_back_past_corrupt_checkpoints_and_continues_exactly(
    reference, tmp_path, caplog
):
    # The three latest checkpoints each get one fault (truncated, altered, a file deleted) in a
    # file drawn at random; the run resumes from the one before and matches the reference.
    rng = np.random.default_rng(1)
    workdir = copy_until(reference, tmp_path / "run", LAST_STEP)
    damaged = {}
    for step, fault in zip((6, 5, 4), FAULTS, strict=True):
        directory = step_dir(workdir, step)
        names = [n for n in files_of(directory) if (directory / n).stat().st_size]
        name = names[int(rng.integers(len(names)))]
        inject(directory / name, fault, rng)
        damaged[step] = name
    with caplog.at_level(logging.INFO, logger="absl"):
        train_lib.train_and_evaluate(smoke_config(**OVERRIDES), str(workdir))
    for step, name in damaged.items():
        assert f"checkpoint {step} is unusable" in caplog.text
        assert name in caplog.text, name
    assert "falling back to checkpoint 3" in caplog.text
    assert "resumed from step 3" in caplog.text
    assert_continues_like(reference, workdir, from_step=3)
    kept = sorted(p.name for p in (workdir / checkpointing.CHECKPOINT_SUBDIR).iterdir())
    assert [n.split(".")[0] for n in kept if ".corrupt-" in n] == ["4", "5", "6"]
    for step in range(1, LAST_STEP + 1):  # the rewritten checkpoints verify
        assert checkpoint_digests.verify(step_dir(workdir, step))


KILL_DURING_SAVE = """
import os, signal, sys
import jax
import orbax.checkpoint as ocp
from absl import app
from deepgin_jax import train

# SIGKILL in Orbax's commit thread while step {step} is saved: its files are written, the
# checkpoint is not final yet.
finalize = ocp.CompositeCheckpointHandler.finalize
def finalize_then_die(self, directory):
    if os.path.basename(str(directory)).startswith("{step}."):
        os.kill(os.getpid(), signal.SIGKILL)
    return finalize(self, directory)
ocp.CompositeCheckpointHandler.finalize = finalize_then_die
jax.config.config_with_absl()
sys.argv = ["train", *{argv!r}]
app.run(train.main)
"""


def test_a_run_killed_during_a_save_resumes_exactly(reference, tmp_path, caplog):
    workdir = tmp_path / "killed"
    argv = [
        f"--config={REPO}/configs/ade20k.py:smoke",
        f"--workdir={workdir}",
        *(f"--config.{k}={v}" for k, v in OVERRIDES.items()),
    ]
    killed = subprocess.run(
        [sys.executable, "-c", KILL_DURING_SAVE.format(step=4, argv=argv)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    checkpoints = workdir / checkpointing.CHECKPOINT_SUBDIR
    names = sorted(p.name for p in checkpoints.iterdir())
    assert "4" not in names and any(n.startswith("4.orbax-checkpoint-tmp") for n in names), names
    assert checkpoint_digests.verify(step_dir(workdir, 3))  # recorded before step 4's save

    with caplog.at_level(logging.INFO, logger="absl"):
        train_lib.train_and_evaluate(smoke_config(**OVERRIDES), str(workdir))
    assert "resumed from step 3" in caplog.text
    assert_continues_like(reference, workdir, from_step=3)


def test_inference_refuses_a_corrupt_checkpoint_naming_the_file(reference, tmp_path, caplog):
    workdir = copy_until(reference, tmp_path / "run", 2)
    latest = step_dir(workdir, 2)
    generator_file = next(n for n in files_of(latest) if n.startswith("generator/ocdbt"))
    inject(latest / generator_file, "flip", np.random.default_rng(2))
    with pytest.raises(checkpointing.CheckpointCorruptError, match=re.escape(generator_file)):
        checkpointing.load_generator(workdir)
    checkpointing.load_discriminator(workdir)  # its own files are intact
    (latest / "meta" / "metadata").unlink()
    for load in (checkpointing.read_meta, checkpointing.load_discriminator):
        with pytest.raises(checkpointing.CheckpointNotFoundError, match="meta/metadata: missing"):
            load(workdir)

    # A checkpoint from before digests loads, with a note.
    old = copy_until(reference, tmp_path / "old", 1)
    (step_dir(old, 1) / checkpoint_digests.DIGESTS_FILE).unlink()
    with caplog.at_level(logging.INFO, logger="absl"):
        model, _ = checkpointing.load_generator(old)
    assert model.base_features == 16 and caplog.text.count("not verified") == 1

    fake = tmp_path / "fake.pth"
    fake.write_bytes(b"not a checkpoint")
    with pytest.raises(checkpointing.CheckpointNotFoundError, match="is a file"):
        checkpointing.load_generator(fake)


def test_training_refuses_when_no_checkpoint_verifies(reference, tmp_path):
    workdir = copy_until(reference, tmp_path / "run", 1)
    inject(step_dir(workdir, 1) / "meta" / "metadata", "truncate", np.random.default_rng(3))
    manager = checkpointing.TrainCheckpointManager(
        workdir / checkpointing.CHECKPOINT_SUBDIR, max_to_keep=10
    )
    try:
        with pytest.raises(checkpointing.CheckpointCorruptError, match=r"no checkpoint.*verifies"):
            manager.latest_verified_step()
    finally:
        manager.close()
    assert step_dir(workdir, 1).is_dir(), "nothing is moved aside when nothing verifies"
