"""The CPU speed goals, side by side in one run: DeepGIN-compact's inference at 256x256, its
warm-up (L1) and GAN training steps (batch 2 photos x 3 masks, 128 px), and the full-size
generator's 256x256 forward, each against what the cores can do.

    python -m benchmarks.cpu_goals                            # this tree, every measurement
    python -m benchmarks.cpu_goals --against=/path/to/old/tree --rounds=6

Each measurement prints its median time, XLA's FLOP count (cost analysis of the program with
XLA's attention: the chunked attention is a loop whose body the analysis counts once), the
GFLOP/s that makes, its fraction of the cores' ceiling and the compiled program's operations
by kind (the instructions XLA runs, outside fusions: convolutions, dots, fusions, and the
layout operations: copies, transposes, pads, concatenations, slices). The ceiling is stated
(--ceiling_gflops: a hand-written 512-bit FMA loop gives about 245 GFLOP/s a core in float32
on Zen 5 cores, 490 for the two; on cores without AVX-512 none is stated unless given) and
XLA's own 2048^3 float32 matmul is measured beside, in each process: `of_matmul` is the
GFLOP/s as a fraction of it, which compares across machines. The cores' model and vector
width head the notes.

--one_core measures this checkout once more in a process pinned to one core, in the same
turns: `two_core_gain` (its time over the two-core one) shows how much of the second core a
program uses.

--floor times, after the rounds, each program's convolutions and dots (scan bodies counted
once per iteration), each compiled and timed alone by its fastest call less an empty call's:
`contractions_ms`, what the program would take with every other operation free and no two
contractions at once. In the --one_core process, half of it bounds what two cores could do
with the same contractions run two at a time.

--against runs the same measurements on another checkout (its `deepgin_jax`) in a second
process, in turns with this one: both processes compile everything first, then each round
times a few calls of one measurement in one process and then in the other, so that a machine
shared with other work slows both alike. The table gives both medians and their ratio. Writes
benchmarks/results/<device>/cpu_goals.{json,md} (--name, --out).

Weights: the shipped DeepGIN-compact for inference, order-one random weights for the rest
(speed does not depend on them); VGG-19 of the real widths with random weights.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MEASUREMENTS = ("compact_inference", "compact_warmup", "compact_gan", "fullsize_forward")
GOALS_S = {
    "compact_inference": 0.025,
    "compact_warmup": 0.150,
    "compact_gan": 1.3,
    "fullsize_forward": 0.44,
}
CEILING_GFLOPS = 490.0
LAYOUT_OPS = ("copy", "transpose", "pad", "concatenate", "slice", "dynamic-slice", "reverse")
VGG_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512)


# --------------------------------------------------------------------------------------------
# The programs (built in the measuring process, with whichever `deepgin_jax` it imports)


def _random_tree(shapes: Any, rng: Any) -> Any:
    import jax
    import jax.numpy as jnp
    import numpy as np

    def draw(leaf: Any) -> Any:
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return np.zeros(leaf.shape, leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)

    return jax.tree.map(draw, shapes)


def _random_vgg(rng: Any) -> Any:
    import numpy as np

    from deepgin_jax.models.vgg import VGG19_CONV_NAMES, vgg_features_from_params

    params, cin = {}, 3
    for name, width in zip(VGG19_CONV_NAMES, VGG_WIDTHS, strict=True):
        kernel = rng.standard_normal((3, 3, cin, width)) / np.sqrt(9 * cin)
        params[name] = {"kernel": kernel.astype(np.float32), "bias": np.zeros(width, np.float32)}
        cin = width
    return vgg_features_from_params(params, {"convention": "torchvision"})  # as training loads it


def _photo_batch(rng: Any, photos: int, masks: int, size: int) -> dict[str, Any]:
    """`photos` random images with `masks` random masks each, laid out as the pipeline does
    (each photo's samples consecutive)."""
    import numpy as np

    images = rng.integers(0, 256, (photos, size, size, 3), np.uint8)
    return {
        "image": np.repeat(images, masks, axis=0),
        "mask": (rng.random((photos * masks, size, size, 1)) > 0.6).astype(np.uint8),
    }


def _generator_program(model: Any, variables: Any, size: int) -> tuple[Any, tuple]:
    import jax
    import numpy as np

    rng = np.random.default_rng(1)
    mask = np.zeros((1, size, size, 1), np.float32)
    mask[:, size // 4 : size // 2, size // 4 : size // 2] = 1
    image = rng.random((1, size, size, 3)).astype(np.float32) * (1 - mask) + mask
    # Held on the device, as `GeneratorForward` holds them (not copied in at every call).
    return jax.jit(model.apply), (jax.device_put(variables), image, mask)


def _load_config(path: Path) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("measured_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _train_program(stage: str) -> tuple[Any, tuple, Any]:
    """(jitted step with the state donated, its arguments, a function giving fresh arguments)."""
    import functools

    import jax
    import numpy as np

    from deepgin_jax import train_state, train_steps
    from deepgin_jax.config import GAN

    config = _load_config(Path.cwd() / "configs" / "compact.py")
    setup = train_state.build_setup(config)
    size = int(config.data.crop_size)
    rng = np.random.default_rng(0)
    init = functools.partial(train_state.init_train_state, setup, crop_size=size)
    state = _random_tree(jax.eval_shape(init, jax.random.key(0)), rng)
    batch = _photo_batch(rng, config.data.items_per_batch, len(config.data.mask_types), size)
    if stage == GAN:
        step = functools.partial(
            train_steps.gan_step,
            setup=setup,
            stage_start=0,
            clip_norm=config.optim.g_clip_norm,
            clip_includes_discriminator=config.optim.clip_includes_discriminator,
        )
        extra = (jax.device_put(_random_vgg(rng)),)
    else:
        step = functools.partial(
            train_steps.warmup_step, setup=setup, clip_norm=config.optim.g_clip_norm
        )
        extra = ()
    jitted = jax.jit(step, donate_argnums=0)
    return jitted, (jax.device_put(state), jax.device_put(batch), *extra)


def build(name: str) -> tuple[Any, tuple, Any]:
    """(the jitted function, its arguments, the same program with XLA's attention or None)."""
    import jax

    from deepgin_jax.models import DeepGIN

    if name == "compact_inference":
        from deepgin_jax import shipped

        model, variables = shipped.load_shipped_generator()
        fn, args = _generator_program(model, variables, 256)
        counting = jax.jit(model.clone(attention_impl="xla").apply)
        return fn, args, counting
    if name == "fullsize_forward":
        import numpy as np

        model = DeepGIN(base_features=64)
        image = jax.ShapeDtypeStruct((1, 64, 64, 3), np.float32)
        mask = jax.ShapeDtypeStruct((1, 64, 64, 1), np.float32)
        shapes = jax.eval_shape(model.init, jax.random.key(0), image, mask)
        variables = _random_tree(shapes, np.random.default_rng(0))
        fn, args = _generator_program(model, variables, 256)
        return fn, args, jax.jit(model.clone(attention_impl="xla").apply)
    stage = "gan" if name == "compact_gan" else "warmup"
    fn, args = _train_program(stage)
    return fn, args, None


def op_counts(hlo_text: str) -> dict[str, int]:
    """Instructions of an optimised HLO module by opcode, outside fused and reducer
    computations (what the CPU runs one by one); fusions are split by kind (`fusion:kLoop`)."""
    computations: dict[str, list[str]] = {}
    lines: list[str] = []
    for line in hlo_text.splitlines():
        header = re.match(r"(?:ENTRY )?%([\w.\-]+) \(", line)
        if header:
            lines = computations.setdefault(header.group(1), [])
        elif line.startswith("  "):
            lines.append(line)
    inner = set()
    for body in computations.values():
        for line in body:
            if " fusion(" in line:
                inner.update(re.findall(r"calls=%([\w.\-]+)", line))
            inner.update(re.findall(r"to_apply=%([\w.\-]+)", line))
    skip = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all"}
    counts: collections.Counter = collections.Counter()
    for name, body in computations.items():
        if name in inner:
            continue
        for line in body:
            match = re.match(r"\s+(?:ROOT )?%\S+ = .*? ([a-z][a-z\-]*)\(", line)
            if not match or match.group(1) in skip:
                continue
            opcode = match.group(1)
            if opcode == "fusion":
                kind = re.search(r"kind=(\w+)", line)
                opcode = f"fusion:{kind.group(1) if kind else '?'}"
            counts[opcode] += 1
    return dict(counts)


def summarise_ops(counts: dict[str, int]) -> dict[str, int]:
    layout = sum(v for k, v in counts.items() if k in LAYOUT_OPS)
    return {
        "ops": sum(counts.values()),
        "convolutions": counts.get("convolution", 0),
        "dots": counts.get("dot", 0),
        "fusions": sum(v for k, v in counts.items() if k.startswith("fusion")),
        "layout_ops": layout,
        "loops": counts.get("while", 0),
    }


def _flops(lowered: Any) -> float | None:
    try:
        cost = lowered.cost_analysis()
    except Exception:  # a backend without cost analysis
        return None
    if isinstance(cost, list):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


class Measurement:
    """One program, compiled, with its FLOPs and operations, timed on demand."""

    def __init__(self, name: str):
        import jax

        self.name = name
        fn, args, counting = build(name)
        start = time.perf_counter()
        lowered = fn.lower(*args)
        self.compiled = lowered.compile()
        self.compile_s = time.perf_counter() - start
        self.flops = _flops(counting.lower(*args) if counting is not None else lowered)
        self.ops = op_counts(self.compiled.as_text())
        self.donates = name in ("compact_warmup", "compact_gan")
        self.fn = fn
        self.args = args
        self._call()  # the first call: allocations and caches
        jax.block_until_ready(self.args)

    def _call(self) -> Any:
        import jax

        out = self.compiled(*self.args)
        if self.donates:
            state, metrics = out
            self.args = (state, *self.args[1:])
            out = metrics
        return jax.block_until_ready(out)

    def time(self, calls: int) -> list[float]:
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            self._call()
            times.append(time.perf_counter() - start)
        return times


# --------------------------------------------------------------------------------------------
# The contractions' floor: each convolution and dot of a program, compiled and timed alone

CONTRACTIONS = ("conv_general_dilated", "dot_general")


def contractions(jaxpr: Any, repeat: int = 1, found: dict | None = None) -> dict[str, list]:
    """The convolutions and dots a jaxpr runs, inner jaxprs included (a scan's body counted
    `length` times): {description: [equation, times run]}, identical ones merged."""
    import jax

    found = {} if found is None else found
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in CONTRACTIONS:
            shapes = ", ".join(str(v.aval) for v in eqn.invars)
            params = ", ".join(f"{k}={v}" for k, v in sorted(eqn.params.items()))
            entry = found.setdefault(f"{eqn.primitive.name}({shapes}; {params})", [eqn, 0])
            entry[1] += repeat
        inner_repeat = repeat * int(eqn.params.get("length", 1))
        for value in eqn.params.values():
            for inner in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(inner, jax.extend.core.ClosedJaxpr):
                    inner = inner.jaxpr
                if isinstance(inner, jax.extend.core.Jaxpr):
                    contractions(inner, inner_repeat, found)
    return found


def _best_time(fn: Any, args: tuple, calls: int) -> float:
    import jax

    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def contraction_floor(fn: Any, args: tuple, calls: int = 7) -> dict[str, Any]:
    """The time of `fn`'s convolutions and dots run one by one, each compiled alone and timed
    by its fastest call, less the fastest call of a program that does nothing (the dispatch,
    which the whole program pays once): what the program takes with every other operation
    free and no two contractions at once."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    idle = _best_time(jax.jit(lambda x: x), (jnp.zeros(()),), 50)
    total, count = 0.0, 0
    for eqn, repeat in contractions(jax.make_jaxpr(fn)(*args).jaxpr).values():
        inputs = tuple(
            jnp.asarray(rng.standard_normal(v.aval.shape), v.aval.dtype) for v in eqn.invars
        )
        alone = jax.jit(lambda *xs, eqn=eqn: eqn.primitive.bind(*xs, **eqn.params))
        total += repeat * max(0.0, _best_time(alone, inputs, calls) - idle)
        count += repeat
    return {"contractions": count, "contractions_s": total}


def vector_isa() -> str:
    """The widest FMA vectors these cores have, from /proc/cpuinfo ("unknown" elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = (
        set(re.findall(r"^flags\s*:\s*(.*)$", text, re.M)[0].split()) if "flags" in text else set()
    )
    model = re.findall(r"^model name\s*:\s*(.*)$", text, re.M)
    width = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model[0] if model else 'unknown model'}, {width} FMA"


def default_ceiling() -> float | None:
    """CEILING_GFLOPS on cores with 512-bit FMA (where it was measured), else None."""
    return CEILING_GFLOPS if "AVX-512" in vector_isa() else None


def xla_matmul_gflops(n: int = 2048, calls: int = 5) -> float:
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    return 2 * n**3 / _best_time(jax.jit(lambda x, y: x @ y), (a, a), calls) / 1e9


def pin_to_one_core() -> None:
    """Keeps this process (and the threads it starts) on one of its cores; before JAX starts,
    since its thread pools size themselves by the cores the process may use."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def serve(names: list[str]) -> None:
    """The measuring process: compiles `names`, reports them, then answers `time NAME CALLS`
    lines on stdin with the times, one JSON line each."""
    measurements = {}
    for name in names:
        m = Measurement(name)
        measurements[name] = m
        info = {"name": name, "compile_s": m.compile_s, "flops": m.flops, "ops": m.ops}
        print(json.dumps(info), flush=True)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command, *arguments = line.split()
        if command == "matmul":
            print(json.dumps({"matmul_gflops": xla_matmul_gflops()}), flush=True)
            continue
        if command == "floor":
            m = measurements[arguments[0]]
            print(json.dumps(contraction_floor(m.fn, m.args)), flush=True)
            continue
        assert command == "time"
        name, calls = arguments
        print(json.dumps({"times": measurements[name].time(int(calls))}), flush=True)


# --------------------------------------------------------------------------------------------
# The driver


class Worker:
    """A measuring process on the checkout `tree`."""

    def __init__(self, tree: Path, names: list[str], one_core: bool = False):
        env = dict(os.environ, PYTHONPATH=str(tree))
        self.tree = tree
        pin = ["--one_core"] if one_core else []
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", ",".join(names), *pin],
            cwd=tree,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info: dict[str, dict] = {}
        self.matmul_gflops = None

    def wait_ready(self) -> None:
        for line in self._lines():
            message = json.loads(line)
            if message.get("ready"):
                return
            self.info[message["name"]] = message
            print(
                f"  [{self.tree.name}] compiled {message['name']}: {message['compile_s']:.1f} s",
                flush=True,
            )

    def time(self, name: str, calls: int) -> list[float]:
        return self._ask(f"time {name} {calls}")["times"]

    def measure_matmul(self) -> None:
        """XLA's matmul rate in this process, asked for once every process has compiled (a
        process still compiling beside it would halve it)."""
        self.matmul_gflops = self._ask("matmul")["matmul_gflops"]

    def floor(self, name: str) -> dict:
        return self._ask(f"floor {name}")

    def _ask(self, line: str) -> dict:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return json.loads(next(self._lines()))

    def _lines(self):
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"the measuring process on {self.tree} ended")
            if line.startswith("{"):
                yield line

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def _load() -> str:
    return Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(MEASUREMENTS), help="Measurements to run.")
    parser.add_argument("--against", default=None, help="Another checkout to measure in turns.")
    parser.add_argument("--rounds", type=int, default=5, help="Rounds of timed calls.")
    parser.add_argument("--calls", type=int, default=0, help="Calls per round (0: by program).")
    parser.add_argument(
        "--one_core", action="store_true", help="Also measure this checkout on one core."
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="Also time each program's convolutions and dots alone (contractions_ms).",
    )
    parser.add_argument("--ceiling_gflops", type=float, default=default_ceiling())
    parser.add_argument("--name", default="cpu_goals")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    flags = parser.parse_args()
    if flags.serve is not None:
        if flags.one_core:
            pin_to_one_core()
        serve(flags.serve.split(","))
        return

    names = flags.only.split(",")
    here = Path(__file__).resolve().parent.parent
    trees = {"this": here}
    if flags.against:
        trees = {"before": Path(flags.against).resolve(), "this": here}
    print(f"load average at start: {_load()}", flush=True)
    workers = {label: Worker(tree, names) for label, tree in trees.items()}
    if flags.one_core:
        workers["one_core"] = Worker(here, names, one_core=True)
    for worker in workers.values():  # they compile at once: timings only after all have
        worker.wait_ready()
    for worker in workers.values():
        worker.measure_matmul()
    times: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    loads = [_load()]
    for _ in range(flags.rounds):
        for name in names:
            calls = flags.calls or (2 if name in ("compact_gan", "fullsize_forward") else 10)
            for label, worker in workers.items():
                times[(label, name)] += worker.time(name, calls)
        loads.append(_load())
    floors = {}
    if flags.floor:  # after the rounds, one process at a time
        for label, worker in workers.items():
            for name in names:
                floors[(label, name)] = worker.floor(name)
    for worker in workers.values():
        worker.close()

    rows = []
    for name in names:
        row: dict[str, Any] = {"measurement": name, "goal_ms": GOALS_S[name] * 1e3}
        for label, worker in workers.items():
            info = worker.info[name]
            median = statistics.median(times[(label, name)])
            gflops = info["flops"] / 1e9 if info["flops"] else None
            row[f"{label}_ms"] = median * 1e3
            row[f"{label}_min_ms"] = min(times[(label, name)]) * 1e3
            row[f"{label}_gflop"] = gflops
            row[f"{label}_gflop_per_s"] = gflops / median if gflops else None
            ceiling = flags.ceiling_gflops
            row[f"{label}_of_ceiling"] = gflops / median / ceiling if gflops and ceiling else None
            matmul = worker.matmul_gflops
            row[f"{label}_of_matmul"] = gflops / median / matmul if gflops and matmul else None
            row[f"{label}_compile_s"] = info["compile_s"]
            row.update({f"{label}_{k}": v for k, v in summarise_ops(info["ops"]).items()})
            row[f"{label}_op_counts"] = info["ops"]
            if (label, name) in floors:
                row[f"{label}_contractions"] = floors[(label, name)]["contractions"]
                row[f"{label}_contractions_ms"] = floors[(label, name)]["contractions_s"] * 1e3
        if "before" in workers:
            row["ratio"] = row["this_ms"] / row["before_ms"]
        if "one_core" in workers:
            row["two_core_gain"] = row["one_core_ms"] / row["this_ms"]
        rows.append(row)
    report(rows, workers, loads, flags)


def report(rows: list[dict], workers: dict, loads: list[str], flags: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks import common

    labels = list(workers)
    columns = ["measurement", "goal_ms"]
    for label in labels:
        columns.append(f"{label}_ms")
        if f"{label}_contractions_ms" in rows[0]:
            columns.append(f"{label}_contractions_ms")
        if label == "one_core":  # the same program as this checkout's
            continue
        columns += [f"{label}_gflop", f"{label}_gflop_per_s", f"{label}_of_ceiling"]
        columns.append(f"{label}_of_matmul")
        columns += [f"{label}_ops", f"{label}_layout_ops", f"{label}_convolutions"]
    columns += [column for column in ("ratio", "two_core_gain") if column in rows[0]]
    path = common.write_results(flags.name, rows, columns, flags.out)
    matmul = {label: w.matmul_gflops for label, w in workers.items()}
    ceiling = (
        f"ceiling {flags.ceiling_gflops:.0f} GFLOP/s (stated: a 512-bit FMA loop on both cores)"
        if flags.ceiling_gflops
        else "no ceiling stated for these cores (the stated 490 GFLOP/s is for 512-bit FMA)"
    )
    extra = (
        f"\ncores: {vector_isa()}; {ceiling}; XLA's 2048^3 float32 matmul here "
        f"(of_matmul divides by it): "
        + ", ".join(f"{label} {g:.0f} GFLOP/s" for label, g in matmul.items())
        + f"; load average over the rounds: {' '.join(loads)}\n"
    )
    path.write_text(path.read_text() + extra)
    print(path.read_text())


if __name__ == "__main__":
    main()
