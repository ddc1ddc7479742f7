"""Where the time of nnjax's compiled train step goes: per-XLA-op times from a `jax.profiler` trace.

Runs nnjax's train step (`nnjax.training.make_train_step`, plain SGD) a few times under
`jax.profiler`, reads the Perfetto trace it writes, sums each XLA op's (fusion's) time per
step, and describes each op from the compiled HLO: its output shape and the operations fused
inside (convolution, dot, reduce, select, transpose, ...). Used by `scripts/bench.py --profile`.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile

import jax

from bench_peers import common, nnjax_rows
from nnjax import training

LABEL_OPS = ("convolution", "dot", "reduce", "reduce-window", "select-and-scatter", "select",
             "transpose", "pad", "slice", "dynamic-slice", "gather", "scatter", "maximum",
             "compare", "exponential", "log", "rsqrt", "divide")


def _fused_ops(hlo: str, op_name: str) -> str:
    """The output shape of `op_name` in `hlo` and the notable operations it computes."""
    line = re.search(r"^\s*(?:ROOT )?%?" + re.escape(op_name) + r" = (\S+) ([^\n]*)", hlo, re.M)
    if not line:
        return ""
    shape, rest = line.group(1), line.group(2)
    called = re.search(r"calls=%?([\w.\-]+)", rest)
    body = rest
    if called:
        computation = re.search(r"^%?" + re.escape(called.group(1)) + r" [^\n]*\{\n(.*?)\n\}", hlo, re.M | re.S)
        body = computation.group(1) if computation else rest
    found = re.findall(r"= \S+ ([\w\-]+)\(", body) or re.findall(r"^([\w\-]+)\(", rest)
    notable = [op for op in dict.fromkeys(found) if op in LABEL_OPS]
    return f"{shape} {' '.join(notable)}".strip()


LIBRARY_KERNEL = "(a kernel the HLO does not name: cuBLAS, cuDNN or a copy)"
"""What `profile` says of a GPU kernel whose name is no HLO instruction's."""


def op_times(trace_dir: str, steps: int) -> tuple[collections.Counter, bool]:
    """Milliseconds per step of each event in the Perfetto trace under `trace_dir`.

    Returns:
      (totals by event name, on_device). On a CPU everything runs in the process "/host:CPU":
      XLA ops and runtime events are all counted, and `profile` keeps those that name an HLO
      instruction. With a GPU the trace has device processes ("/device:GPU:0 ..."): only their
      events count (on_device is True), and of those only the line "XLA Ops" (one event per
      HLO instruction, cuBLAS calls included) where the trace has one, so that a kernel is not
      counted twice. The GPU branch is tested on hand-made traces only.
    """
    path = sorted(glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "perfetto_trace.json.gz")))[-1]
    with gzip.open(path) as handle:
        trace = json.load(handle)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    names = {(event["name"], event.get("pid"), event.get("tid")): event.get("args", {}).get("name", "")
             for event in events if event.get("ph") == "M"}
    device_pids = {pid for (kind, pid, _), name in names.items() if kind == "process_name" and name.startswith("/device:")}
    op_lines = {(pid, tid) for (kind, pid, tid), name in names.items()
                if kind == "thread_name" and pid in device_pids and name == "XLA Ops"}
    totals: collections.Counter = collections.Counter()
    for event in events:
        where = (event.get("pid"), event.get("tid"))
        if event.get("ph") == "X" and (not device_pids or where in op_lines or (not op_lines and where[0] in device_pids)):
            totals[event["name"]] += event["dur"] / 1e3 / steps
    return totals, bool(device_pids)


def profile(model: str, batch_size: int, grads: str, steps: int = 5, top: int = 20) -> dict:
    """Per-op times of nnjax's `grads` train step of `model` at `batch_size` (synthetic data).

    Returns:
      {"model", "batch_size", "grads", "step_ms" (wall, unprofiled), "ops_ms" (sum of the XLA
      ops' times per step), "ops": [{"name", "ms", "share", "what"}] for the `top` slowest
      ops, "kinds_ms": {kind: ms} summed over all ops (`op_kind`)}.
    """
    images, labels = common.synthetic_mnist(batch_size * 4)
    data = common.cut_epoch(images, labels, batch_size, 4)
    step, trained, device_data, batches, devices = nnjax_rows._setup(model, data, 0.01, grads)
    carry = nnjax_rows._fresh_carry(trained, devices)
    compiled = training.compile_ahead(step, carry, device_data, batches, donate=True)
    hlo = compiled.as_text()

    def run(n):
        nonlocal carry
        for _ in range(n):
            carry = nnjax_rows._fresh_carry(carry[:3], devices)
            carry, _ = compiled(carry, device_data, batches)
            jax.block_until_ready(carry)

    run(2)
    step_ms = min(common.timed(lambda: run(1)) for _ in range(steps)) * 1e3
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        run(steps)
        jax.profiler.stop_trace()
        totals, on_device = op_times(trace_dir, steps)
    described = [(name, ms, _fused_ops(hlo, name) or (LIBRARY_KERNEL if on_device else ""))
                 for name, ms in totals.most_common()]
    ops_ms = sum(ms for _, ms, what in described if what)
    ops = [{"name": name, "ms": ms, "share": ms / ops_ms, "what": what} for name, ms, what in described if what]
    kinds: collections.Counter = collections.Counter()
    for op in ops:
        kinds[op_kind(op["what"])] += op["ms"]
    return {"model": model, "batch_size": batch_size, "grads": grads, "step_ms": step_ms,
            "ops_ms": ops_ms, "ops": ops[:top], "kinds_ms": dict(kinds.most_common())}


def op_kind(what: str) -> str:
    """A coarse class of an XLA op from its `_fused_ops` description."""
    if what == LIBRARY_KERNEL:
        return "library kernels"
    fused = what.split()[1:]
    if "convolution" in fused:
        return "convolutions"
    if "dot" in fused:
        return "matrix products"
    if "transpose" in fused:
        return "element-wise with a layout transpose"
    if "reduce" in fused:
        return "reductions"
    return "other element-wise"


def format_profile(result: dict) -> str:
    lines = [f"\nnnjax {result['grads']} train step, {result['model'].upper()} batch {result['batch_size']}: "
             f"{result['step_ms']:.1f} ms per step (best of runs); XLA ops sum to {result['ops_ms']:.1f} ms per step",
             f"{'ms/step':>8s} {'share':>6s}  {'op':34s} output shape, fused operations"]
    for op in result["ops"]:
        lines.append(f"{op['ms']:8.2f} {100 * op['share']:5.1f}%  {op['name'][:34]:34s} {op['what'][:110]}")
    lines.append("by kind: " + ", ".join(f"{kind} {ms:.1f} ms ({100 * ms / result['ops_ms']:.0f}%)"
                                         for kind, ms in result["kinds_ms"].items()))
    return "\n".join(lines)
