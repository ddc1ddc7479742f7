"""Training throughput of nnjax against hand-written raw JAX and the peer frameworks.

One epoch of SGD (60,000 examples, or --steps batches) of the chapter's MLP 784-128-64-10
and the experiments' CNN, at each batch size, for: nnjax with autodiff and with hand-derived
gradients (nnjax's own train step, as a Python loop of jitted steps and as a `lax.scan`
epoch); raw JAX written by hand (the same two ways); Flax NNX; Equinox; PyTorch eager and
`torch.compile`. Same architecture, batch and data for every row. Compilation and warm-up
are timed apart; each row's epoch is timed --repeats times and the best is kept.

Prints one table per (model, batch size): samples/s, the ratio to the fastest row and to the
raw-JAX scan epoch, the FLOP rate as a fraction of a large float32 matrix product's measured
in the same run, the warm-up time; then the hand-derived/autodiff step-time ratio and the
issue's targets. Writes everything as JSON (--out).

    python scripts/bench.py                                  # the full benchmark
    python scripts/bench.py --models cnn --batch-sizes 128 --steps 50 --repeats 2
    python scripts/bench.py --data synthetic --steps 2 --frameworks nnjax,raw_jax
    python scripts/bench.py --models mlp --compute-dtype bfloat16   # every row in mixed precision

The peers are the optional extra `pip install -e '.[bench]'`; a missing one is reported as
"skipped (not installed)".
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path[:0] = [str(SCRIPTS), str(SCRIPTS.parent)]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench_peers import common  # noqa: E402
from nnjax.atomic import write_json, write_text  # noqa: E402
from nnjax.training import COMPUTE_DTYPES, REUSE_MEMORY_ENV, reuse_freed_memory, use_host_cores  # noqa: E402

MODES = ("loop", "scan")
FRAMEWORKS = ("nnjax", "raw_jax", "flax", "equinox", "torch", "torch_compile")
PEER_MODULES = {"nnjax": "nnjax_rows", "raw_jax": "raw_jax", "flax": "flax_nnx",
                "equinox": "equinox_peer"}
PEER_LABELS = {"flax": "Flax NNX", "equinox": "Equinox", "torch": "PyTorch eager",
               "torch_compile": "PyTorch compile"}
TARGETS = {"vs_raw_jax_scan": 1.0, "vs_fastest_peer": 1.3, "flop_fraction": {"mlp": 0.75, "cnn": 0.5},
           "manual_over_autodiff": 1.05, "first_step_s": 2.0}
"""The issue's targets (measured here, reported, never asserted)."""
EAGER_TIME_BOX_S = 3600.0
RUNNING = "running"
"""The status of a row still being measured."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help shows the module docstring as written, and each option's default."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--data", choices=("real", "synthetic"), default=None,
                        help="real MNIST (prepared by `python -m nnjax.data prepare`) or random data "
                             "of the same shape; default: real if prepared, else synthetic")
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated, from: mlp, cnn")
    parser.add_argument("--batch-sizes", default="128,1024", help="comma-separated batch sizes")
    parser.add_argument("--steps", type=int, default=None,
                        help="batches per timed epoch (default: a 60,000-example epoch, 60000 // batch)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per row; the best counts")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate")
    parser.add_argument("--compute-dtype", choices=COMPUTE_DTYPES, default="float32",
                        help="precision of every row's forward and backward pass; bfloat16 is each "
                             "framework's own mixed precision (nnjax's compute_dtype, a bfloat16 "
                             "copy of the params and inputs in raw JAX and Equinox, Flax's layer "
                             "dtype, PyTorch's autocast), parameters and updates in float32")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                        help=f"comma-separated rows to run, from: {', '.join(FRAMEWORKS)}")
    parser.add_argument("--modes", default="loop,scan",
                        help="epoch modes of the JAX rows: loop (jitted step in a Python loop), scan, or both")
    parser.add_argument("--compile-timeout", type=float, default=300.0,
                        help="seconds torch.compile may take for its first step before it is skipped")
    parser.add_argument("--compile-workers", type=int, default=1,
                        help="JAX rows compiled (warmed up) at once, in threads; >1 shortens the warm-up "
                             "phase on a many-core host (a GPU machine) but each row's warm-up time then "
                             "overlaps the others' (the JSON's meta says so)")
    parser.add_argument("--matmul-size", type=int, default=None,
                        help="n of the n x n float32 matrix product that sets the reference FLOP rate "
                             "(default: 2048 on a CPU, 8192 on a GPU, large enough to fill each)")
    parser.add_argument("--profile", action="store_true",
                        help="instead of the table: per-XLA-op times of nnjax's train step (autodiff and "
                             "hand-derived) for each model and batch size, from a jax.profiler trace, "
                             "written to --out (default then profile.json); it takes --models, "
                             "--batch-sizes and --compute-dtype only")
    parser.add_argument("--malloc", choices=("reuse", "default"), default="reuse",
                        help="reuse: every row (PyTorch's child processes too) runs with glibc's malloc "
                             "keeping freed memory (nnjax.training.reuse_freed_memory), as nnjax's "
                             "experiments do; default: glibc's defaults")
    parser.add_argument("--out", default=None, help="where to write the JSON results (default: bench.json, "
                                                     "with --profile profile.json)")
    parser.add_argument("--markdown", default=None, help="also write the tables as Markdown to this file")
    args = parser.parse_args(argv)
    args.models = _split_choices(parser, "--models", args.models, common.MODELS)
    args.frameworks = _split_choices(parser, "--frameworks", args.frameworks, FRAMEWORKS)
    args.modes = _split_choices(parser, "--modes", args.modes, MODES)
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        parser.error(f"--batch-sizes={args.batch_sizes!r}: expected comma-separated integers")
    if min(args.batch_sizes) < 2:
        parser.error(f"--batch-sizes={','.join(map(str, args.batch_sizes))}: each must be >= 2 (batch norm "
                     f"needs two examples)")
    for flag, value in (("--steps", args.steps), ("--repeats", args.repeats), ("--compile-workers",
                                                                               args.compile_workers)):
        if value is not None and value < 1:
            parser.error(f"{flag}={value}: must be >= 1")
    if args.profile:
        ignored = [flag for flag, value, default in (
            ("--steps", args.steps, None), ("--repeats", args.repeats, 3), ("--markdown", args.markdown, None),
            ("--frameworks", args.frameworks, list(FRAMEWORKS)), ("--modes", args.modes, list(MODES)))
            if value != default]
        if ignored:
            parser.error(f"--profile times nnjax's step alone; it takes no {', '.join(ignored)}")
    args.out = args.out or ("profile.json" if args.profile else "bench.json")
    return args


def _split_choices(parser, flag: str, value: str, allowed) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        problem = f"unknown {unknown}" if unknown else "no names given"
        parser.error(f"{flag}={value!r}: {problem}; allowed: {', '.join(allowed)}")
    return names


def load_data(kind: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """MNIST's training images and labels, or synthetic ones; and a note saying which."""
    if kind != "synthetic":
        try:
            from nnjax.data import load_mnist

            images, labels = load_mnist("train")
            return images, labels, "real MNIST training set"
        except Exception as error:  # noqa: BLE001 - any missing/corrupt file falls back or fails below
            if kind == "real":
                raise SystemExit(f"bench: --data real but MNIST cannot be loaded: {error}")
            reason = f"synthetic (MNIST not prepared: {type(error).__name__}; run `python -m nnjax.data prepare`)"
            images, labels = common.synthetic_mnist(common.EPOCH_EXAMPLES)
            return images, labels, reason
    images, labels = common.synthetic_mnist(common.EPOCH_EXAMPLES)
    return images, labels, "synthetic random uint8 images and labels of MNIST's shape"


def matmul_flop_rate(n: int, repeats: int = 30) -> float:
    """FLOP/s of a jitted n x n @ n x n float32 product (2 n^3 FLOPs), best of `repeats` (many,
    so that a machine shared with other work still shows what it can do)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    product = jax.jit(jnp.matmul)
    product(a, b).block_until_ready()
    best = min(common.timed(lambda: product(a, b).block_until_ready()) for _ in range(repeats))
    return 2.0 * n**3 / best


def measured(name: str, family: str, note: str, warmup_s: float, times: list[float],
             data: common.EpochData, step_flops: float) -> dict:
    """A measured row: the epoch times, the best of them as samples/s and ms per step."""
    return {"name": name, "family": family, "note": note, "status": "measured", "warmup_s": warmup_s,
            "epoch_s": times, "best_s": min(times), "median_s": float(np.median(times)),
            "samples_per_s": data.steps * data.batch_size / min(times),
            "step_ms": 1e3 * min(times) / data.steps, "step_flops": step_flops}


def failed(name: str, family: str, error: Exception) -> dict:
    return {"name": name, "family": family,
            "status": f"failed: {type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"}


def skipped(name: str, family: str, reason: str) -> dict:
    return {"name": name, "family": family, "status": reason}


def jax_rows(framework: str, model: str, data: common.EpochData, args) -> list:
    """The rows of a JAX framework (nnjax, raw JAX, Flax NNX, Equinox) in --modes: a trainer for
    each, still to be warmed up (`warmed_up`); or the framework's skipped/failed row."""
    family = framework if framework in ("nnjax", "raw_jax") else "peer"
    try:
        module = __import__(f"bench_peers.{PEER_MODULES[framework]}", fromlist=["make_trainers"])
    except common.PeerUnavailable as reason:
        return [skipped(PEER_LABELS[framework], family, str(reason))]
    try:
        trainers = module.make_trainers(model, data, args.lr, args.compute_dtype)
    except Exception as error:  # noqa: BLE001 - e.g. a model nnjax does not provide yet
        return [failed(PEER_LABELS.get(framework, framework), family, error)]
    return [t for t in trainers if t.name.split()[-1] in args.modes]


def warmed_up(row) -> dict:
    """A trainer from `jax_rows` warmed up (trace + compile + first step, timed) and ready for
    its timed epochs, or its failed row; a row that is already a record passes through."""
    if isinstance(row, dict):
        return row
    try:
        warmup_s = common.timed(row.first_step)
    except Exception as error:  # noqa: BLE001 - a row that fails is reported, the others go on
        return failed(row.name, row.family, error)
    return {"name": row.name, "family": row.family, "status": RUNNING, "warmup_s": warmup_s,
            "epoch_s": [], "trainer": row}


def torch_entries(model: str, data: common.EpochData, args, epoch_file: str) -> list[dict]:
    """PyTorch eager (with its default threads, and with one thread when the machine has more
    than one core: on a loaded machine OpenMP's barriers can make one thread faster), and
    torch.compile time-boxed to --compile-timeout plus twice the eager epoch time."""
    specs = []
    if "torch" in args.frameworks:
        specs.append({"compiled": False, "threads": None})
        if (os.cpu_count() or 1) > 1 and torch_device() == "cpu":
            specs.append({"compiled": False, "threads": 1})
    if "torch_compile" in args.frameworks:
        specs.append({"compiled": True, "threads": None})
    try:
        from bench_peers import torch_peer  # noqa: F401 - only checks that torch is installed
    except common.PeerUnavailable as reason:
        return [skipped(torch_name(**spec), "peer", str(reason)) for spec in specs]
    return [{"name": torch_name(**spec), "family": "peer", "status": RUNNING, "epoch_s": [],
             "torch": dict(spec, model=model, epoch_file=epoch_file)} for spec in specs]


def torch_device() -> str:
    """Where the PyTorch rows train: on the GPU when JAX's rows do, else on the CPU."""
    return "cuda" if jax.default_backend() == "gpu" else "cpu"


def torch_name(compiled: bool, threads: int | None) -> str:
    return PEER_LABELS["torch_compile" if compiled else "torch"] + (f" {threads} thread" if threads == 1 else "")


def torch_epoch(entry: dict, args, eager_s: float) -> None:
    """One timed PyTorch epoch in a child process (after its own warm-up), added to `entry`;
    a child that fails or runs past its time box turns the entry into a skipped row.

    A child process keeps PyTorch's OpenMP threads and XLA's thread pool from competing
    (measured here: a PyTorch step slowed up to 4x in a process that had run JAX).
    """
    spec = entry["torch"]
    time_box = args.compile_timeout + 2 * eager_s + 10 if spec["compiled"] else EAGER_TIME_BOX_S
    command = [sys.executable, "-m", "bench_peers.torch_peer", "--model", spec["model"], "--epoch-file",
               spec["epoch_file"], "--lr", str(args.lr), "--repeats", "1", "--device", torch_device(),
               "--compute-dtype", args.compute_dtype] \
        + ([] if spec["compiled"] else ["--eager"]) + ([] if spec["threads"] is None else ["--threads", str(spec["threads"])])
    env = dict(os.environ, **(REUSE_MEMORY_ENV if args.malloc == "reuse" else {}),
               PYTHONPATH=os.pathsep.join([str(SCRIPTS), os.environ.get("PYTHONPATH", "")]))
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=time_box, env=env, cwd=SCRIPTS)
    except subprocess.TimeoutExpired:
        limit = f"; compile limit {args.compile_timeout:.0f} s" if spec["compiled"] else ""
        entry.update(status=f"skipped (did not finish within its {time_box:.0f} s time box{limit})")
        return
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        entry.update(status=f"failed: {last}")
        return
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if spec["compiled"] and result["first_step_s"] > args.compile_timeout:
        entry.update(status=f"skipped (compile took {result['first_step_s']:.0f} s, over "
                            f"--compile-timeout {args.compile_timeout:.0f} s)")
        return
    entry["warmup_s"] = min(entry.get("warmup_s", math.inf), result["first_step_s"])
    entry["epoch_s"] += result["epoch_s"]
    entry["note"] = result["note"]


def run_config(model: str, batch_size: int, images, labels, args) -> list[dict]:
    """Every requested row for one (model, batch size), their timed epochs interleaved.

    All rows are warmed up first; then each of --repeats rounds times one epoch of every row,
    in an order rotated by one each round, so that a machine whose speed drifts over minutes
    (measured here: up to 2x) slows every row alike instead of the rows that ran last.
    """
    steps = args.steps or common.EPOCH_EXAMPLES // batch_size
    data = common.cut_epoch(images, labels, batch_size, steps)
    rows = [row for framework in ("nnjax", "raw_jax", "flax", "equinox") if framework in args.frameworks
            for row in jax_rows(framework, model, data, args)]
    with ThreadPoolExecutor(args.compile_workers) as pool:
        entries = list(pool.map(warmed_up, rows))
    print(f"  {model} B={batch_size}: {len(rows)} JAX rows compiled", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as folder:
        epoch_file = os.path.join(folder, "epoch.npz")
        np.savez(epoch_file, images=data.images, labels=data.labels, pixels=data.pixels)
        if {"torch", "torch_compile"} & set(args.frameworks):
            entries += torch_entries(model, data, args, epoch_file)
        for round_ in range(args.repeats):
            running = [e for e in entries if e["status"] == RUNNING]
            shift = round_ % max(len(running), 1)
            for entry in running[shift:] + running[:shift]:
                eager = [e for e in entries if e["name"] == PEER_LABELS["torch"] and e.get("epoch_s")]
                timed_epoch(entry, args, min(eager[0]["epoch_s"]) if eager else 60.0)
            print(f"  {model} B={batch_size}: round {round_ + 1} of {args.repeats} timed", file=sys.stderr, flush=True)
    return [finished(entry, data, model) for entry in entries]


def timed_epoch(entry: dict, args, eager_s: float) -> None:
    """Times one epoch of a row; a row whose epoch raises becomes a failed row."""
    if "torch" in entry:
        torch_epoch(entry, args, eager_s)
        return
    try:
        entry["epoch_s"].append(common.timed(entry["trainer"].epoch))
    except Exception as error:  # noqa: BLE001 - a row that fails is reported, the others go on
        entry.update(failed(entry["name"], entry["family"], error))


def finished(entry: dict, data: common.EpochData, model: str) -> dict:
    """A row's final record: measured (best of its epochs), or its skip/failure as it stands."""
    if entry["status"] != RUNNING:
        return {k: entry[k] for k in ("name", "family", "status")}
    trainer = entry.get("trainer")
    row = measured(entry["name"], entry["family"], trainer.note if trainer else entry.get("note", ""),
                   entry["warmup_s"], entry["epoch_s"], data, common.step_flops(model, data.batch_size))
    if trainer is not None and trainer.cost_analysis is not None:
        row["xla_step_flops"] = trainer.cost_analysis()
    return row


def add_ratios(rows: list[dict], matmul_flops_per_s: float) -> None:
    """Each measured row's ratio to the fastest row and to raw JAX scan, and its FLOP fraction."""
    measured = [r for r in rows if r["status"] == "measured"]
    if not measured:
        return
    fastest = max(r["samples_per_s"] for r in measured)
    scan = next((r["samples_per_s"] for r in measured if r["name"] == "raw JAX scan"), None)
    for r in measured:
        r["vs_fastest"] = r["samples_per_s"] / fastest
        r["vs_raw_jax_scan"] = r["samples_per_s"] / scan if scan else None
        r["flop_rate"] = r["step_flops"] * 1e3 / r["step_ms"]
        r["flop_fraction"] = r["flop_rate"] / matmul_flops_per_s


def summarize(model: str, batch_size: int, rows: list[dict]) -> dict:
    """The issue's targets for one configuration, from its rows."""
    by_name = {r["name"]: r for r in rows if r["status"] == "measured"}
    nnjax = [r for r in by_name.values() if r["family"] == "nnjax"]
    peers = [r for r in by_name.values() if r["family"] == "peer"]
    best = max(nnjax, key=lambda r: r["samples_per_s"], default=None)
    summary = {"model": model, "batch_size": batch_size, "nnjax_best": best and best["name"]}
    if best is None:
        return summary
    scan = by_name.get("raw JAX scan")
    fastest_peer = max(peers, key=lambda r: r["samples_per_s"], default=None)
    summary["vs_raw_jax_scan"] = scan and best["samples_per_s"] / scan["samples_per_s"]
    summary["fastest_peer"] = fastest_peer and fastest_peer["name"]
    summary["vs_fastest_peer"] = fastest_peer and best["samples_per_s"] / fastest_peer["samples_per_s"]
    summary["flop_fraction"] = best["flop_fraction"]
    for mode in ("loop", "scan"):
        auto, manual = by_name.get(f"nnjax autodiff {mode}"), by_name.get(f"nnjax manual {mode}")
        if auto and manual:
            summary[f"manual_over_autodiff_{mode}"] = manual["step_ms"] / auto["step_ms"]
    first = by_name.get("nnjax autodiff loop") or by_name.get("nnjax manual loop")
    summary["first_step_s"] = first and first["warmup_s"]
    return summary


def format_table(model: str, batch_size: int, steps: int, rows: list[dict]) -> str:
    header = (f"\n{model.upper()}  batch {batch_size}  ({steps} steps = {steps * batch_size} examples per epoch)\n"
              f"{'row':22s} {'samples/s':>10s} {'ms/step':>8s} {'/fastest':>8s} {'/rawscan':>8s} "
              f"{'%matmul':>7s} {'warm-up s':>9s}  note")
    lines = [header, "-" * len(header.splitlines()[-1])]
    for r in rows:
        if r["status"] != "measured":
            lines.append(f"{r['name']:22s} {r['status']}")
            continue
        scan = f"{r['vs_raw_jax_scan']:.2f}x" if r.get("vs_raw_jax_scan") else "-"
        lines.append(f"{r['name']:22s} {r['samples_per_s']:10.0f} {r['step_ms']:8.2f} {r['vs_fastest']:7.2f}x "
                     f"{scan:>8s} {100 * r['flop_fraction']:6.1f}% {r['warmup_s']:9.2f}  {r.get('note', '')}")
    return "\n".join(lines)


def markdown_table(config: dict) -> str:
    """One configuration's rows as a Markdown table (for docs/benchmarks.md)."""
    lines = [f"**{config['model'].upper()}, batch {config['batch_size']}** "
             f"({config['steps']} steps = {config['steps'] * config['batch_size']} examples per timed epoch)", "",
             "| row | samples/s | ms/step | vs fastest | vs raw JAX scan | % of matmul FLOP rate | warm-up s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in config["rows"]:
        if r["status"] != "measured":
            lines.append(f"| {r['name']} | {r['status']} | | | | | |")
            continue
        scan = f"{r['vs_raw_jax_scan']:.2f}x" if r.get("vs_raw_jax_scan") else "-"
        lines.append(f"| {r['name']} | {r['samples_per_s']:,.0f} | {r['step_ms']:.2f} | {r['vs_fastest']:.2f}x | "
                     f"{scan} | {100 * r['flop_fraction']:.1f}% | {r['warmup_s']:.2f} |")
    return "\n".join(lines)


def format_summary(summaries: list[dict]) -> str:
    """The targets of issue 5, one line per configuration, each marked met or missed."""
    def mark(value, target, higher_is_better=True):
        if value is None:
            return "n/a"
        met = value >= target if higher_is_better else value <= target
        return f"{value:.3f} ({'met' if met else 'MISSED'}, target {'>=' if higher_is_better else '<='} {target})"

    lines = ["\nTargets (best nnjax row per configuration):"]
    for s in summaries:
        if s.get("nnjax_best") is None:
            continue
        lines.append(
            f"{s['model']} B={s['batch_size']} [{s['nnjax_best']}]: "
            f"vs raw JAX scan {mark(s.get('vs_raw_jax_scan'), TARGETS['vs_raw_jax_scan'])}; "
            f"vs fastest peer ({s.get('fastest_peer')}) {mark(s.get('vs_fastest_peer'), TARGETS['vs_fastest_peer'])}; "
            f"FLOP fraction {mark(s['flop_fraction'], TARGETS['flop_fraction'][s['model']])}; "
            f"manual/autodiff step loop {mark(s.get('manual_over_autodiff_loop'), TARGETS['manual_over_autodiff'], False)}, "
            f"scan {mark(s.get('manual_over_autodiff_scan'), TARGETS['manual_over_autodiff'], False)}; "
            f"first compiled step s {mark(s.get('first_step_s'), TARGETS['first_step_s'], False)}")
    return "\n".join(lines)


def machine() -> dict:
    """Where and when the numbers were taken."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {"python": platform.python_version(), "jax": jax.__version__, "numpy": np.__version__}
    for name in ("flax", "equinox", "optax", "torch"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return {"cpu": model, "cores": os.cpu_count(), "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind), "platform": platform.platform(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions, "load_average_start": os.getloadavg()}


def run_profiles(args) -> int:
    """`--profile`: where the time of nnjax's train steps goes, op by op."""
    from bench_peers import nnjax_rows, profile_step

    results = {"meta": machine(), "profiles": []}
    for model in args.models:
        for batch_size in args.batch_sizes:
            for grads in nnjax_rows.GRAD_SOURCES:
                result = profile_step.profile(model, batch_size, grads, compute_dtype=args.compute_dtype)
                results["profiles"].append(result)
                print(profile_step.format_profile(result), flush=True)
    results["meta"]["load_average_end"] = os.getloadavg()
    write_json(args.out, results)
    print(f"wrote {args.out}")
    return 0


def main(argv=None) -> int:
    use_host_cores()
    args = parse_args(argv)
    reuse = args.malloc == "reuse" and reuse_freed_memory()
    memory_note = "malloc keeps freed memory" if reuse else "default malloc"
    if args.profile:
        return run_profiles(args)
    images, labels, data_note = load_data(args.data)
    meta = machine()
    meta.update(command=" ".join([Path(sys.argv[0]).name] + sys.argv[1:]), data=data_note, malloc=memory_note,
                lr=args.lr, repeats=args.repeats, compile_workers=args.compile_workers,
                compute_dtype=args.compute_dtype)
    if args.compile_workers > 1:
        meta["warmup_note"] = f"JAX rows warmed up {args.compile_workers} at a time: their warm-up times overlap"
    print(f"bench: {meta['cpu']} ({meta['cores']} cores, {meta['backend']}), jax {jax.__version__}, "
          f"data: {data_note}, {memory_note} (every row), {args.compute_dtype}, "
          f"load average {meta['load_average_start'][0]:.2f}", flush=True)
    args.matmul_size = args.matmul_size or (8192 if jax.default_backend() == "gpu" else 2048)
    matmul = matmul_flop_rate(args.matmul_size)
    meta["matmul_flops_per_s"] = matmul
    print(f"reference: float32 {args.matmul_size}x{args.matmul_size} matmul at {matmul / 1e9:.1f} GFLOP/s", flush=True)
    results = {"meta": meta, "configs": []}
    for model in args.models:
        for batch_size in args.batch_sizes:
            start = time.perf_counter()
            rows = run_config(model, batch_size, images, labels, args)
            add_ratios(rows, matmul)
            steps = args.steps or common.EPOCH_EXAMPLES // batch_size
            summary = summarize(model, batch_size, rows)
            if args.compile_workers > 1:
                summary["first_step_s"] = None  # the warm-ups overlapped: not a first step's time
            results["configs"].append({"model": model, "batch_size": batch_size, "steps": steps,
                                       "rows": rows, "summary": summary,
                                       "wall_s": time.perf_counter() - start})
            print(format_table(model, batch_size, steps, rows), flush=True)
    meta["load_average_end"] = os.getloadavg()
    print(format_summary([c["summary"] for c in results["configs"]]))
    print(f"load average at start {meta['load_average_start'][0]:.2f}, at end {meta['load_average_end'][0]:.2f} "
          f"({meta['cores']} cores); wrote {args.out}")
    write_json(args.out, results)
    if args.markdown:
        write_text(args.markdown, "\n\n".join(markdown_table(c) for c in results["configs"]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
