"""benchmarks/cpu_goals.py's operation counts of a compiled program (the timing is not tested)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from benchmarks import cpu_goals
from benchmarks.cpu_goals import op_counts, summarise_ops


def test_op_counts_read_the_programs_top_level_instructions():
    def f(x, w):
        y = jax.lax.conv_general_dilated(
            x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        z = jnp.concatenate([y, x[:, ::-1]], axis=1)  # a layout operation XLA cannot fuse away
        return jnp.tanh(z).sum(), z.transpose(0, 3, 1, 2)

    x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
    counts = op_counts(jax.jit(f).lower(x, w).compile().as_text())
    summary = summarise_ops(counts)
    assert summary["ops"] == sum(counts.values()) > 0
    assert summary["convolutions"] + counts.get("fusion:kCustom", 0) >= 1  # plain or YNNPACK
    assert not {"parameter", "constant", "tuple", "get-tuple-element"} & set(counts)
    assert summary["fusions"] >= 1


def test_the_512_bit_ceiling_is_stated_only_on_cores_with_avx512(monkeypatch):
    here = cpu_goals.vector_isa()  # this machine's, from /proc/cpuinfo
    assert here == "unknown" or here.endswith(("AVX-512 FMA", "AVX2 FMA", "no AVX2 FMA")), here
    monkeypatch.setattr(cpu_goals, "vector_isa", lambda: "AMD EPYC, AVX-512 FMA")
    assert cpu_goals.default_ceiling() == cpu_goals.CEILING_GFLOPS
    monkeypatch.setattr(cpu_goals, "vector_isa", lambda: "AMD EPYC, AVX2 FMA")
    assert cpu_goals.default_ceiling() is None


def test_the_one_core_process_and_the_threads_it_starts_keep_to_one_core():
    script = (
        "import os, threading\n"
        "from benchmarks import cpu_goals\n"
        "cpu_goals.pin_to_one_core()\n"
        "seen = []\n"
        "thread = threading.Thread(target=lambda: seen.append(len(os.sched_getaffinity(0))))\n"
        "thread.start(); thread.join()\n"
        "print(len(os.sched_getaffinity(0)), seen[0])\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["1", "1"]


def test_contractions_count_each_convolution_and_dot_with_scan_bodies_repeated():
    def f(x, w):
        y = jax.lax.conv_general_dilated(
            x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        z = jax.lax.conv_general_dilated(
            y, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        rows = z.reshape(8, 8, 4)
        return jax.lax.map(lambda r: r @ r.T, rows).sum() + jnp.tanh(z).sum()

    x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
    found = cpu_goals.contractions(jax.make_jaxpr(f)(x, w).jaxpr)
    kinds = sorted((key.split("(")[0], times) for key, (_, times) in found.items())
    assert kinds == [("conv_general_dilated", 2), ("dot_general", 8)]  # two identical, merged

    gradient = cpu_goals.contractions(jax.make_jaxpr(jax.grad(f, argnums=1))(x, w).jaxpr)
    assert sum(times for _, times in gradient.values()) > 10  # the backward pass's as well
    floor = cpu_goals.contraction_floor(f, (x, w), calls=2)
    assert floor["contractions"] == 10 and 0 <= floor["contractions_s"] < 1


def test_the_driver_times_the_contractions_of_the_compact_inference(tmp_path):
    argv = [
        sys.executable, "-m", "benchmarks.cpu_goals", "--only=compact_inference", "--rounds=1",
        "--calls=1", "--floor", "--name=goals", f"--out={tmp_path}",
    ]  # fmt: skip
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(repo))
    subprocess.run(argv, cwd=repo, env=env, check=True, capture_output=True, text=True)
    (table,) = tmp_path.glob("*/goals.json")
    (row,) = json.loads(table.read_text())["rows"]
    assert row["measurement"] == "compact_inference"
    # The shipped network's 256x256 pass: its convolutions and dots (the attention's blocks
    # once per block), each timed alone, take a good part of the whole pass.
    assert row["this_contractions"] > 100
    assert 0 < row["this_contractions_ms"] < 3 * row["this_ms"]
    assert "this_contractions_ms" in (tmp_path / table.parent.name / "goals.md").read_text()
