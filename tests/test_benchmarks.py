"""The training-step benchmark: it runs, writes its tables, and counts every FLOP of the step."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from deepgin_jax import config as config_lib
from deepgin_jax import train_state, train_steps
from tests.test_train import ONE_BLOCK_NETWORK

REPO = Path(__file__).resolve().parents[1]
WIDTH, SIZE, BATCH = 8, 256, 2  # 256 px: the 1/4-scale attention has 4096 tokens (chunked)


def warmup_step_flops(attention_impl: str, compiled: bool) -> float:
    config = config_lib.default_config()
    config.model.base_features = WIDTH
    for key, value in ONE_BLOCK_NETWORK.items():
        config.model[key.removeprefix("model.")] = value
    config.model.attention_impl = attention_impl
    setup = train_state.build_setup(config)
    state = jax.eval_shape(
        functools.partial(train_state.init_train_state, setup, crop_size=SIZE), jax.random.key(0)
    )
    batch = {
        "image": jax.ShapeDtypeStruct((BATCH, SIZE, SIZE, 3), jnp.uint8),
        "mask": jax.ShapeDtypeStruct((BATCH, SIZE, SIZE, 1), jnp.uint8),
    }
    step = functools.partial(
        train_steps.warmup_step, setup=setup, clip_norm=config.optim.g_clip_norm
    )  # the benchmark's step is bound as training binds it
    lowered = jax.jit(step).lower(state, batch)
    return (lowered.compile() if compiled else lowered).cost_analysis()["flops"]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the chunked attention is CPU-only")
def test_train_step_benchmark_counts_the_chunked_attention_in_full(tmp_path):
    command = [
        sys.executable, "-m", "benchmarks.train_step", "--stage=warmup", f"--width={WIDTH}",
        f"--size={SIZE}", f"--batches={BATCH}", "--repeats=1", "--novgg", f"--out={tmp_path}",
        "--config=configs/ade20k.py", "--name=one_block",
        *(f"--config.{key}={value}" for key, value in ONE_BLOCK_NETWORK.items()),
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=REPO, capture_output=True, text=True)
    results = tmp_path / "cpu-x1"
    (row,) = json.loads((results / "train_step_warmup_one_block.json").read_text())["rows"]
    assert (row["stage"], row["batch"], row["width"]) == ("warmup", BATCH, WIDTH)
    table = (results / "train_step_warmup_one_block.md").read_text()
    assert row["step_ms"] > 0 and "| warmup |" in table
    # XLA's cost analysis of the compiled CPU step counts the chunked attention's loop body once.
    loop_counted_once = warmup_step_flops("chunked", compiled=True)
    every_flop = warmup_step_flops("xla", compiled=False)
    assert row["tflop_per_step"] * 1e12 == pytest.approx(every_flop, rel=1e-6)
    assert every_flop > 1.05 * loop_counted_once


# Parses the benchmark's flags in a fresh process (the package's CLIs define --config too) and
# prints the setup it would measure, without compiling.
SETUP_PROBE = """
import json, sys
from benchmarks import train_step as bench
from deepgin_jax import train_state

bench.FLAGS(sys.argv)
config = bench.measured_config("float32")
setup = train_state.build_setup(config)
shapes = bench.state_shapes(setup, bench.crop_size())
step = bench.step_function(setup, config)
print(json.dumps({
    "g_first": shapes.g_params["coarse"]["enc_conv1"]["kernel"].shape[-1],
    "d_first": [scale["conv0"]["kernel"].shape[-1] for scale in shapes.d_params.values()],
    "size": bench.crop_size(),
    "vgg_image_size": setup.loss_config.vgg_image_size,
    "step": step.func.__name__,
    "clip_norm": step.keywords["clip_norm"],
    "name": bench.results_name(),
}))
"""


def benchmark_setup(*args: str) -> dict:
    command = [sys.executable, "-c", SETUP_PROBE, *args]
    result = subprocess.run(command, check=True, cwd=REPO, capture_output=True, text=True)
    return json.loads(result.stdout.splitlines()[-1])


def test_train_step_benchmark_measures_a_config_file():
    compact = f"--config={REPO / 'configs' / 'compact.py'}"
    # DeepGIN-compact: generator base 16 (first conv 8), both discriminators 16, 128 px crops,
    # VGG losses at 128 px, and the clipping bound from the config, not a fixed 3.0.
    assert benchmark_setup(compact, "--config.optim.g_clip_norm=1.5") == {
        "g_first": 8,
        "d_first": [16, 16],
        "size": 128,
        "vgg_image_size": 128,
        "step": "gan_step",
        "clip_norm": 1.5,
        "name": "train_step_compact",
    }
    # --width and --size override the config's; --name the results file's suffix.
    got = benchmark_setup(compact, "--stage=warmup", "--width=8", "--size=64", "--name=probe")
    assert (got["g_first"], got["d_first"], got["size"]) == (4, [16, 16], 64)
    assert (got["step"], got["clip_norm"]) == ("warmup_step", 3.0)
    assert got["name"] == "train_step_warmup_probe"
    # Without --config: the paper's default discriminator (64) and the unsuffixed results file.
    got = benchmark_setup("--width=8", "--size=64")
    assert (got["g_first"], got["d_first"], got["name"]) == (4, [64, 64], "train_step")


def test_heldout_crops_have_holes_and_scores_rank_fills():
    import numpy as np

    from benchmarks import heldout
    from deepgin_jax.data import sample_image_paths

    batch = heldout.masked_crops(sample_image_paths()[:2], 64, seed=0)
    assert batch["image"].shape == (6, 64, 64, 3) and batch["mask"].shape == (6, 64, 64, 1)
    ratios = batch["mask"].reshape(6, -1).mean(axis=1)
    assert ((ratios > 0) & (ratios < 1)).all()
    truth = batch["image"].astype(np.float64) / 255.0
    perfect = heldout.hole_scores(truth, batch)
    scores = heldout.baseline_scores(batch)
    assert perfect["hole_psnr"] == 100.0  # the error floor of 1e-10
    assert scores["telea"]["hole_psnr"] > scores["mean_colour"]["hole_psnr"]
    for name in heldout.STRONGER_BASELINES:  # smooth fills, and no copy of the truth
        assert scores["mean_colour"]["hole_psnr"] < scores[name]["hole_psnr"] < 60
    assert scores["mean_colour"]["hole_std"] < 1e-6
    assert scores["target"]["hole_std"] == perfect["hole_std"]


def test_fullsize_holes_are_an_object_box_and_scaled_strokes():
    import numpy as np

    from benchmarks import heldout

    holes = heldout.fullsize_holes(600, 800, seed=3)
    box, strokes = holes["box"], holes["strokes"]
    assert box.shape == strokes.shape == (600, 800) and box.dtype == strokes.dtype == bool
    assert abs(box.mean() - 0.05) < 0.001  # 0.2 x 0.25 of the sides
    rows, cols = np.flatnonzero(box.any(axis=1)), np.flatnonzero(box.any(axis=0))
    assert box[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()  # one solid box
    assert 0.05 < strokes.mean() < 0.9
    again = heldout.fullsize_holes(600, 800, seed=3)
    assert all((again[k] == holes[k]).all() for k in holes)


def test_hole_errors_score_only_the_hole():
    import numpy as np

    from benchmarks import heldout

    image = np.full((8, 8, 3), 100, np.uint8)
    hole = np.zeros((8, 8), bool)
    hole[2:4, 2:4] = True
    result = image.copy()
    result[hole] += 51  # 0.2 of full scale inside the hole
    result[~hole] = 0  # outside it: ignored
    scores = heldout.hole_errors(result, image, hole)
    assert np.isclose(scores["hole_l1_percent"], 20.0)
    assert np.isclose(scores["hole_psnr"], 10 * np.log10(1 / 0.04))


def test_lpips_scores_average_per_mask_kind():
    import numpy as np

    from benchmarks import heldout

    batch = {
        "image": np.zeros((6, 4, 4, 3), np.uint8),
        "mask": np.ones((6, 4, 4, 1), np.uint8),
    }
    completed = np.zeros((6, 4, 4, 3))
    completed[:, 0, 0, 0] = np.arange(6)  # samples 0, 3 rect; 1, 4 ca; 2, 5 freeform

    def distance(a, b):
        assert a.dtype == b.dtype == np.float32 and b.max() == 0.0
        return np.abs(a - b).reshape(len(a), -1).sum(axis=1)

    scores = heldout.lpips_scores(distance, completed, batch)
    assert scores == {
        "lpips": 2.5,
        "lpips_rect": 1.5,
        "lpips_ca": 2.5,
        "lpips_freeform": 3.5,
    }


def run_compact_model(command: str, *flags: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "benchmarks.compact_model", command, *flags]
    return subprocess.run(argv, check=True, cwd=REPO, capture_output=True, text=True)


def test_compact_model_drivers_write_curves_grid_and_fullsize_scores(tmp_path):
    import numpy as np
    from PIL import Image

    from deepgin_jax import metric_writers
    from tests.inpainting_helpers import tiny_checkpoint, write_lpips_file

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for index, (height, width) in enumerate([(72, 96), (90, 64)]):
        rows = np.linspace(0, 255, height)[:, None, None]
        noise = rng.normal(0, 10, (height, width, 3))
        image = np.clip(rows * rng.random(3) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(photos / f"{index}.png")
    snapshots = tmp_path / "snapshots"
    for step in (200, 100):
        shutil.copytree(tiny_checkpoint(), snapshots / str(step))
    (snapshots / "300.tmp").mkdir()  # a copy still being made: not a step, skipped
    workdir = tmp_path / "run"
    workdir.mkdir()
    with open(workdir / metric_writers.METRICS_FILE, "w") as f:
        for step in range(1, 41):
            f.write(json.dumps({"step": step, "g_loss": 1.0 / step}) + "\n")
    write_lpips_file(tmp_path / "lpips.npz")
    out = tmp_path / "results"

    run_compact_model(
        "curves", f"--workdir={workdir}", f"--snapshots={snapshots}", f"--heldout={photos}",
        f"--lpips={tmp_path / 'lpips.npz'}", "--size=64", f"--out={out}",
    )  # fmt: skip
    rows = json.loads((out / "cpu-x1" / "compact_curves.json").read_text())["rows"]
    steps = [row["step"] for row in rows]
    assert steps[:2] == [100, 200]
    assert {"telea", "biharmonic", "fsr_fast", "mean_colour", "target"} <= set(steps[2:])
    assert all(rows[i]["lpips_ca"] > 0 and rows[i]["hole_psnr"] > 0 for i in (0, 1))
    assert rows[0]["hole_psnr"] == rows[1]["hole_psnr"]  # the same weights under both steps
    assert Image.open(out / "cpu-x1" / "compact_curves.png").size[0] > 1000  # three panels

    run_compact_model(
        "grid", f"--checkpoint={tiny_checkpoint()}", f"--photos={photos}", "--picks=0,1",
        "--row_height=48", f"--output={tmp_path / 'grid.png'}",
    )  # fmt: skip
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape[0] == 2 * (48 + 4)
    # The widest row: 5 whole-photo panels 64 wide, 4 crops at 100 % 48 wide, 8 gaps.
    assert grid.shape[1] == 5 * round(96 * 48 / 72) + 4 * 48 + 8 * 4
    from deepgin_jax import masks
    from deepgin_jax.full_size_evaluation import crop_around

    hole = masks.object_mask(masks.mask_rng(0, 0), 72, 96, "ellipse") > 0.5
    original = np.asarray(Image.open(photos / "0.png"))
    np.testing.assert_array_equal(grid[:48, -48:], original[crop_around(hole, side=48)])

    run_compact_model(
        "fullsize", f"--checkpoint={tiny_checkpoint()}", f"--photos={photos}",
        "--tile_sizes=64", f"--out={out}",
    )  # fmt: skip
    table = json.loads((out / "cpu-x1" / "compact_fullsize.json").read_text())["rows"]
    assert {(row["method"], row["hole"]) for row in table} == {
        (method, hole)
        for method in ("tile 64", "telea", "biharmonic", "fsr_fast")
        for hole in ("box", "strokes")
    }
    assert all(row["photos"] == 2 and row["hole_psnr"] > 0 for row in table)
    telea = [row for row in table if row["method"] == "telea"]
    assert all(row["wins_vs_telea"] == 0 for row in telea)  # never strictly ahead of itself


def test_compact_model_drivers_name_what_they_miss(tmp_path):
    def error_of(*flags: str) -> str:
        argv = [sys.executable, "-m", "benchmarks.compact_model", *flags]
        result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
        assert result.returncode != 0
        return result.stderr

    assert "grid needs --output" in error_of("grid", f"--photos={tmp_path}")
    assert "curves needs --workdir, --snapshots" in error_of("curves", f"--heldout={tmp_path}")
    assert "usage: python -m benchmarks.compact_model" in error_of("plot")
    (tmp_path / "run").mkdir()
    empty = error_of(
        "curves", f"--workdir={tmp_path / 'run'}", f"--snapshots={tmp_path / 'run'}",
        f"--heldout={REPO / 'deepgin_jax' / 'data' / 'samples'}", "--heldout_images=1",
    )  # fmt: skip
    assert "no checkpoint step folders" in empty


def test_inference_benchmark_runs_a_shipped_folder_with_its_cards_settings(tmp_path):
    from deepgin_jax import shipped
    from tests.inpainting_helpers import tiny_checkpoint

    model = tmp_path / "model"
    shipped.write_shipped_weights(
        tiny_checkpoint(), model, card={"upscale": 2.0, "blend": "poisson"}
    )

    def rows(*flags: str) -> list[dict]:
        argv = [sys.executable, "-m", "benchmarks.inference", f"--checkpoint={model}"]
        argv += ["--sizes=48x40", "--repeats=1", f"--out={tmp_path}", *flags]
        subprocess.run(argv, check=True, cwd=REPO, capture_output=True, text=True)
        (table,) = tmp_path.glob("*/inference.json")
        return json.loads(table.read_text())["rows"]

    (row,) = rows()
    assert (row["upscale"], row["blend"]) == (2.0, "poisson")
    # 48 wide, 40 high: enlarged x2 to 96 x 80, in the 128 shape bucket.
    assert row["network_batches"] == [[1, 128, 128]]
    (row,) = rows("--blend=paste")
    assert (row["upscale"], row["blend"]) == (2.0, "paste")


TRAIN_FIELDS = {
    "stage", "dtype", "attention", "batch", "size", "width", "compile_s", "step_ms",
    "images_per_s", "tflop_per_step", "mfu", "xla_memory_bytes", "device_peak_bytes",
}  # fmt: skip
INFERENCE_FIELDS = {
    "model", "dtype", "size", "network_input", "first_call_s", "latency_ms", "min_ms",
    "device_peak_bytes",
}  # fmt: skip


def test_gpu_suite_dry_run_writes_its_parts_results(tmp_path):
    """The shell entry point as a GPU host runs it, at the tiny size (no wheels to install
    here), for one training part and one inference part: the other parts run the same two
    modules with other flags (each part's compile costs a minute on these cores)."""
    from benchmarks import gpu_suite

    parts = gpu_suite.plan(gpu_suite.TINY)
    assert {p.name for p in parts} == {
        "train_step_bf16_xla", "train_step_f32_xla", "train_step_bf16_cudnn",
        "train_step_warmup_bf16_xla", "train_step_warmup_f32_xla", "train_step_warmup_bf16_cudnn",
        "inference_fullsize", "inference_compact", "inference_compact_paste",
    }  # fmt: skip
    chosen = [p for p in parts if p.name in ("train_step_bf16_cudnn", "inference_compact")]
    env = {**os.environ, "PYTHON": sys.executable, "TINY": "1", "OUT": str(tmp_path)}
    env["WHEELS"] = str(tmp_path / "no-wheels")
    env["DEADLINE_S"] = env["PART_TIMEOUT_S"] = "3000"  # the GPU's limits; a loaded CPU is slower
    env["PARTS"] = ",".join(p.name for p in chosen)
    subprocess.run(["bash", "benchmarks/gpu_suite.sh"], check=True, cwd=REPO, env=env)
    assert sorted(p.name for p in (tmp_path / "suite").glob("*.json")) == sorted(
        f"{p.name}.json" for p in chosen
    )
    for part in chosen:
        record = json.loads((tmp_path / "suite" / f"{part.name}.json").read_text())
        assert record["status"] == "ok", (part.name, record.get("log_tail"))
        assert record["environment"]["backend"] == "cpu" and record["rows"], part.name
        fields = TRAIN_FIELDS if part.module == "benchmarks.train_step" else INFERENCE_FIELDS
        for row in record["rows"]:
            assert fields <= set(row), (part.name, fields - set(row))
        if part.module == "benchmarks.train_step":
            (row,) = record["rows"]
            assert row["step_ms"] > 0 and row["tflop_per_step"] > 0 and row["mfu"] is None
            assert row["xla_memory_bytes"] > 0
            assert row["dtype"] == "bfloat16" and row["stage"] == "gan"
        else:
            sizes = [(r["dtype"], r["size"]) for r in record["rows"]]
            images = gpu_suite.TINY.image_sizes
            assert sizes == [(d, s) for d in ("float32", "bfloat16") for s in images]
            assert all(r["latency_ms"] > 0 for r in record["rows"])


def test_gpu_suite_goes_on_after_a_failed_part_and_skips_what_does_not_fit(tmp_path):
    from benchmarks import gpu_suite

    parts = [
        gpu_suite.Part("broken", "benchmarks.no_such_module", (), 1, "fails"),
        gpu_suite.Part("listed", "benchmarks.gpu_suite", ("--list",), 1, "succeeds, no results"),
        gpu_suite.Part("too_long", "benchmarks.gpu_suite", ("--list",), 1e6, "over the budget"),
    ]
    records = gpu_suite.run(parts, tmp_path, deadline_s=600, part_timeout_s=60)
    statuses = [r["status"] for r in records]
    assert statuses[0].startswith("failed (exit") and "no_such_module" in records[0]["log_tail"]
    assert statuses[1] == "failed (no results file)"
    assert statuses[2].startswith("skipped")
    for part in parts:  # every part has its file, whatever happened
        assert json.loads((tmp_path / "suite" / f"{part.name}.json").read_text())["part"]


def test_new_holes_benchmark_compiles_nothing_after_warm_up(tmp_path):
    import numpy as np
    from PIL import Image

    from deepgin_jax import shipped
    from tests.inpainting_helpers import tiny_shipped

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), np.uint8)).save(tmp_path / "photo.png")
    argv = [
        sys.executable, "-m", "benchmarks.new_holes", f"--photo={tmp_path / 'photo.png'}",
        "--size=400,300", "--holes=2", "--strokes=1", f"--out={tmp_path}", f"--against={REPO}",
    ]  # fmt: skip
    env = {**os.environ, shipped.ENV_VAR: str(tiny_shipped())}
    subprocess.run(argv, check=True, cwd=REPO, capture_output=True, text=True, env=env)
    (table,) = tmp_path.glob("*/new_holes.json")
    rows = json.loads(table.read_text())["rows"]
    # --against: the other checkout's run, then this one's, in one table.
    assert [(r["checkout"], r["strategy"], r["case"][:6]) for r in rows] == [
        (checkout, strategy, case)
        for checkout in ("before", "this")
        for strategy in ("scaled", "polyphase")
        for case in ("warm_u", "hole 0", "hole 1", "stroke")
    ]
    rows = [r for r in rows if r["checkout"] == "this"]
    holes = [r for r in rows if r["case"].startswith("hole")]
    assert all(3 <= r["hole_percent"] <= 8.5 and r["wall_s"] > 0 for r in holes), holes
    assert [r["compiled"] for r in rows if r["case"] != "warm_up"] == [0] * 6
    assert rows[0]["compiled"] > 0  # the warm-up is what compiles

    # An inpainter for each number of parallel calls, taking every hole in turns (an option
    # of this checkout's run only).
    argv = [*argv[:-2], "--holes=1", "--parallel_calls=1,2", "--strategies=scaled"]
    argv.append(f"--out={tmp_path / 'strokes'}")
    subprocess.run(argv, check=True, cwd=REPO, capture_output=True, text=True, env=env)
    (table,) = (tmp_path / "strokes").glob("*/new_holes.json")
    rows = json.loads(table.read_text())["rows"]
    assert [(r["case"][:6], r["parallel_calls"]) for r in rows] == [
        (case, calls) for case in ("warm_u", "hole 0", "stroke") for calls in (1, 2)
    ]
    strokes = [r for r in rows if r["case"].startswith("strokes")]
    assert all(r["hole_percent"] > 1 and r["wall_s"] > 0 for r in strokes), strokes
    assert [r["compiled"] for r in rows[2:]] == [0, 0, 0, 0]


def test_startup_benchmark_times_a_first_and_a_later_process(tmp_path):
    import numpy as np
    from PIL import Image

    from deepgin_jax import shipped
    from tests.inpainting_helpers import tiny_shipped

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), np.uint8)).save(tmp_path / "photo.png")
    argv = [
        sys.executable, "-m", "benchmarks.startup", f"--photo={tmp_path / 'photo.png'}",
        "--size=120,90", "--hole=40,30", "--repeats=1", f"--out={tmp_path}",
    ]  # fmt: skip
    env = {**os.environ, shipped.ENV_VAR: str(tiny_shipped())}
    subprocess.run(argv, check=True, cwd=REPO, capture_output=True, text=True, env=env)
    (table,) = tmp_path.glob("*/startup.json")
    rows = json.loads(table.read_text())["rows"]
    assert [(r["checkout"], r["process"]) for r in rows] == [
        ("this", "first ever"),
        ("this", "later 1"),
    ]
    assert all(r["wall_s"] > 0 and r["cpu_s"] > 0 and r["load"] >= 0 for r in rows), rows


def test_poisson_solve_benchmark_times_both_solvers_on_the_same_holes(tmp_path):
    argv = [
        sys.executable, "-m", "benchmarks.poisson_solve", "--size=400,300", "--holes=20",
        f"--out={tmp_path}",
    ]  # fmt: skip
    subprocess.run(argv, check=True, cwd=REPO, capture_output=True, text=True)
    (table,) = tmp_path.glob("*/poisson_solve.json")
    rows = json.loads(table.read_text())["rows"]
    assert [r["solver"] for r in rows] == ["exact", "two-level"]
    assert rows[0]["pixels"] == rows[1]["pixels"] > 20_000
    assert all(r["factor_cpu_s"] > 0 and r["solve_cpu_s"] > 0 for r in rows)
    assert 0 < rows[1]["max_difference"] < 0.1  # 0-255 levels


def test_one_photo_benchmark_writes_both_pngs_and_times_their_writers(tmp_path):
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(photo)
    argv = [
        sys.executable, "-m", "benchmarks.one_photo", f"--photo={photo}", "--size=64,48",
        "--repeats=1", "--parts=png", f"--out={tmp_path}",
    ]  # fmt: skip
    subprocess.run(argv, check=True, cwd=REPO, capture_output=True, text=True)
    (table,) = tmp_path.glob("*/one_photo.json")
    rows = json.loads(table.read_text())["rows"]
    assert [(r["part"], r["variant"]) for r in rows] == [
        (f"png, level {level}", variant)
        for level in (1, 6)
        for variant in ("image_io (Up filter)", "Pillow")
    ]
    assert all(0 < r["fastest_s"] <= r["slowest_s"] and r["bytes"] > 48 * 64 for r in rows)
