"""The full-size DeepGIN's speed measurements on one GPU, as parts that each finish in minutes.

    python3 -m benchmarks.gpu_suite --out=$OUT                      # every part, in order
    python3 -m benchmarks.gpu_suite --out=$OUT --parts=train_step_bf16_xla,inference_fullsize
    python3 -m benchmarks.gpu_suite --list                          # the plan, with estimates
    python3 -m benchmarks.gpu_suite --tiny --out=/tmp/check         # the same, tiny, on a CPU

Each part is one run of `benchmarks.train_step` or `benchmarks.inference` in its own process
(so one that fails, runs out of memory or hangs leaves the others, and its device's peak memory
is its own), killed after --part_timeout_s. Parts run in the order of PARTS, the most wanted
first; a part whose estimate no longer fits before --deadline_s is skipped, so one call never
runs past its limit and a later call can run the rest (--parts). Every part writes
`<out>/suite/<part>.json`: its status (ok, failed, timeout, skipped), seconds, command, the
log's tail, and on success the benchmark's rows (also in `<out>/<device>/<part>.{json,md}`).
This runner never touches the accelerator itself: it imports no JAX.

The batches: 12 (the paper's 4 photos x 3 masks) and the largest that fits with a margin, from
XLA's memory analysis of the compiled step on a CPU (README, "The GPU suite"). `--tiny` shrinks
the model, crops, batches and repeats to a CPU dry run of the same parts (cuDNN attention,
which a CPU lacks, becomes XLA's there, and the GAN step leaves out VGG-19's losses).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = "suite"


@dataclasses.dataclass(frozen=True)
class Part:
    name: str  # also the results file's name
    module: str
    args: tuple[str, ...]
    estimate_s: float  # expected wall time on one H100, start-up and compiles included
    what: str


@dataclasses.dataclass(frozen=True)
class Scale:
    """The sizes a plan measures: the full-size model, or a tiny one for a CPU dry run."""

    width: int
    size: int
    gan_batches: dict[str, tuple[int, ...]]  # dtype -> (the paper's batch, the largest)
    warmup_batches: dict[str, tuple[int, ...]]
    image_sizes: tuple[str, str]
    repeats: int
    cudnn: str  # the attention implementation the "cudnn" parts use
    vgg: bool  # the GAN step's perceptual and style losses
    train_config: tuple[str, ...] = ()  # train_step's --config and overrides


# Largest batches: XLA's planned memory (arguments, outputs, temporaries) of the step compiled
# on a CPU, linear in the batch, kept to about half of an H100's 79.6 GB (README).
FULL = Scale(
    width=64,
    size=256,
    gan_batches={"bfloat16": (12, 32), "float32": (12, 32)},
    warmup_batches={"bfloat16": (12, 48), "float32": (12, 48)},
    image_sizes=("256x256", "2560x1600"),
    repeats=10,
    cudnn="cudnn",
    vgg=True,
)
TINY = Scale(
    width=4,
    size=64,
    gan_batches={"bfloat16": (2,), "float32": (2,)},
    warmup_batches={"bfloat16": (2,), "float32": (2,)},
    image_sizes=("256x256", "512x320"),
    repeats=1,
    cudnn="xla",
    vgg=False,  # VGG-19's compile alone would take most of a CPU dry run's minute
    # The smoke config (discriminator width 8) with one residual block per generator stage.
    train_config=(
        f"--config={REPO / 'configs' / 'ade20k.py'}:smoke",
        "--config.model.num_coarse_blocks=1",
        "--config.model.num_refine_blocks=1",
    ),
)


def plan(scale: Scale) -> list[Part]:
    """The parts in the order they run: GAN steps, inference, warm-up steps, then extras."""

    def train(stage: str, dtype: str, attention: str, estimate_s: float) -> Part:
        batches = (scale.gan_batches if stage == "gan" else scale.warmup_batches)[dtype]
        short = {"bfloat16": "bf16", "float32": "f32"}[dtype]
        suffix = f"{short}_{attention}"
        name = f"train_step_{suffix}" if stage == "gan" else f"train_step_warmup_{suffix}"
        implementation = scale.cudnn if attention == "cudnn" else attention
        args = (
            *scale.train_config,
            f"--stage={stage}",
            f"--dtypes={dtype}",
            f"--batches={','.join(map(str, batches))}",
            f"--attention_impl={implementation}",
            f"--width={scale.width}",
            f"--size={scale.size}",
            f"--repeats={scale.repeats}",
            f"--name={suffix}",
            "--vgg" if scale.vgg else "--novgg",
        )
        listed = " and ".join(map(str, batches))
        what = f"{stage} step, {dtype}, {attention} attention, batches {listed}"
        return Part(name, "benchmarks.train_step", args, estimate_s, what)

    def inference(name: str, model: tuple[str, ...], estimate_s: float, what: str) -> Part:
        args = (
            *model,
            f"--sizes={','.join(scale.image_sizes)}",
            "--dtypes=float32,bfloat16",
            f"--repeats={scale.repeats}",
            f"--name={name}",
        )
        return Part(name, "benchmarks.inference", args, estimate_s, what)

    sizes = " and ".join(scale.image_sizes)
    return [
        train("gan", "bfloat16", "xla", 200),
        train("gan", "float32", "xla", 200),
        train("gan", "bfloat16", "cudnn", 200),
        inference(
            "inference_fullsize",
            (f"--width={scale.width}",),
            90,
            f"Inpainter latency, random full-size model, {sizes}, float32 and bfloat16",
        ),
        inference(
            "inference_compact",
            ("--checkpoint=shipped",),
            60,
            f"Inpainter latency, the shipped DeepGIN-compact with its card's settings, {sizes}",
        ),
        train("warmup", "bfloat16", "xla", 120),
        train("warmup", "float32", "xla", 120),
        train("warmup", "bfloat16", "cudnn", 120),
        inference(
            "inference_compact_paste",
            ("--checkpoint=shipped", "--blend=paste"),
            60,
            f"as inference_compact with the plain paste (the network's time without the "
            f"Poisson blend), {sizes}",
        ),
    ]


def run_part(part: Part, out: Path, timeout_s: float) -> dict:
    """Runs one part in its own process; returns its status record (also written to
    `<out>/suite/<part>.json`)."""
    command = [sys.executable, "-m", part.module, *part.args, f"--out={out}"]
    log_path = out / RESULTS_DIR / f"{part.name}.log"
    start = time.perf_counter()
    status = "ok"
    with open(log_path, "w") as log:
        try:
            result = subprocess.run(
                command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s
            )
            if result.returncode:
                status = f"failed (exit {result.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timeout ({timeout_s:.0f} s)"
    record = {
        "part": part.name,
        "what": part.what,
        "status": status,
        "seconds": time.perf_counter() - start,
        "estimate_s": part.estimate_s,
        "command": command[1:],
    }
    results = sorted(out.glob(f"*/{part.name}.json"))
    results = [p for p in results if p.parent.name != RESULTS_DIR]
    if status == "ok" and results:
        record.update(json.loads(results[-1].read_text()))
    elif status == "ok":
        record["status"] = "failed (no results file)"
    if record["status"] != "ok":
        record["log_tail"] = log_path.read_text()[-4000:]
    return record


def run(parts: list[Part], out: Path, *, deadline_s: float, part_timeout_s: float) -> list[dict]:
    """Runs `parts` in order; skips those whose estimate no longer fits before `deadline_s`."""
    (out / RESULTS_DIR).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    records = []
    for part in parts:
        left = deadline_s - (time.perf_counter() - start)
        if part.estimate_s > left:
            record = {
                "part": part.name,
                "what": part.what,
                "status": f"skipped ({left:.0f} s left, estimate {part.estimate_s:.0f} s)",
                "estimate_s": part.estimate_s,
            }
        else:
            record = run_part(part, out, min(part_timeout_s, left))
        (out / RESULTS_DIR / f"{part.name}.json").write_text(json.dumps(record, indent=2))
        print(f"{part.name}: {record['status']} ({record.get('seconds', 0):.0f} s)", flush=True)
        records.append(record)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results", help="Where results go.")
    parser.add_argument("--parts", default="", help="Comma-separated part names (default: all).")
    parser.add_argument("--tiny", action="store_true", help="A CPU dry run at a tiny size.")
    parser.add_argument("--list", action="store_true", help="Print the plan and exit.")
    parser.add_argument("--deadline_s", type=float, default=560.0, help="Budget for all parts.")
    parser.add_argument("--part_timeout_s", type=float, default=240.0, help="Limit of one part.")
    args = parser.parse_args(argv)
    parts = plan(TINY if args.tiny or os.environ.get("DEEPGIN_SUITE_TINY") else FULL)
    if args.parts:
        wanted = args.parts.split(",")
        unknown = set(wanted) - {p.name for p in parts}
        if unknown:
            parser.error(f"unknown parts {sorted(unknown)}; known: {[p.name for p in parts]}")
        parts = [p for p in parts if p.name in wanted]
    if args.list:
        for part in parts:
            print(f"{part.name:32} ~{part.estimate_s:4.0f} s  {part.what}")
        print(f"total ~{sum(p.estimate_s for p in parts):.0f} s")
        return 0
    records = run(
        parts, Path(args.out), deadline_s=args.deadline_s, part_timeout_s=args.part_timeout_s
    )
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
