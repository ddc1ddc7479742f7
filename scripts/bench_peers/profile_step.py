"""Where the time of nnjax's compiled train step goes: per-XLA-op times from a `jax.profiler` trace.

Runs nnjax's train step (`nnjax.training.make_train_step`, plain SGD) a few times under
`jax.profiler`, reads the Perfetto trace it writes, sums each XLA op's (fusion's) time per
step, and describes each op from the compiled HLO: its output shape and the operations fused
inside (convolution, dot, reduce, select, transpose, ...). With the batch split across
devices, the cross-device collectives (`COLLECTIVE_OPS`) are booked as a kind of their own,
and `rendezvous` splits their time into the meetings themselves and the waits for a device
held up. Used by `scripts/bench.py --profile`.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import statistics
import tempfile

import jax

from bench_peers import common, nnjax_rows
from nnjax import training

COLLECTIVE_OPS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
"""Cross-device operations: with the batch split across devices, a device's time in one of
these includes waiting for the others to arrive (`op_kind` books them apart, `rendezvous`
times them one by one)."""
COLLECTIVES = "cross-device collectives (waiting included)"
"""The kind `op_kind` gives an op computing one of `COLLECTIVE_OPS`."""
SHAPE = r"\([^)]*\)|\S+"
"""An HLO result shape: one array's (f32[64]{0}) or a tuple's, spaces and all."""
LABEL_OPS = ("convolution", "dot", "reduce", "reduce-window", "select-and-scatter", "select",
             "transpose", "pad", "slice", "dynamic-slice", "gather", "scatter", "maximum",
             "compare", "exponential", "log", "rsqrt", "divide") + COLLECTIVE_OPS


def _fused_ops(hlo: str, op_name: str) -> str:
    """The output shape of `op_name` in `hlo` and the notable operations it computes."""
    line = re.search(r"^\s*(?:ROOT )?%?" + re.escape(op_name) + r" = (" + SHAPE + r") ([^\n]*)", hlo, re.M)
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


EXECUTION = "ThunkExecutor::Execute (wait for completion)"
"""The CPU trace's event spanning one run of a compiled program on one device."""
END_MARK = "end: "
"""The CPU trace marks an op's completion with an event named END_MARK + the op's name."""
BETWEEN_OPS = "(runtime between ops)"
"""Where `op_times` books idle time inside a run that no unfinished op accounts for."""
IDLE = "(no op running or unfinished: the runtime's own time)"
"""What `profile` says of `BETWEEN_OPS`."""


def _union(intervals) -> list[tuple[float, float]]:
    """Sorted, merged [start, end) intervals."""
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def _gaps(covered, within) -> list[tuple[float, float]]:
    """The parts of the `within` intervals that no `covered` interval touches (both merged)."""
    gaps, i = [], 0
    for start, end in within:
        cursor = start
        while i < len(covered) and covered[i][1] <= cursor:
            i += 1
        j = i
        while j < len(covered) and covered[j][0] < end:
            if covered[j][0] > cursor:
                gaps.append((cursor, covered[j][0]))
            cursor = max(cursor, covered[j][1])
            j += 1
        if cursor < end:
            gaps.append((cursor, end))
    return gaps


def async_tails(events) -> collections.Counter:
    """Microseconds that CPU ops keep running after their own trace event has ended.

    An XLA CPU op that calls a library (Eigen's matrix products, say) may return at once and
    finish on the thread pool; its event then covers only the call, and the trace marks the
    real completion with a later "end: <op>" event. Idle time inside a run (`EXECUTION`),
    when no op's event is open, belongs to the ops started but not yet marked complete,
    shared equally where several are; idle time with none pending is booked to
    `BETWEEN_OPS`. Without completion marks or runs (older traces) this is empty.

    Args:
      events: the trace's "X" (complete) events.

    Returns:
      {op name: microseconds after its events, summed over the trace}.
    """
    ops = sorted((e["ts"], e["ts"] + e["dur"], e["name"]) for e in events if "hlo_op" in e.get("args", {}))
    ends: dict[str, list[float]] = collections.defaultdict(list)
    for event in events:
        if event["name"].startswith(END_MARK):
            ends[event["name"][len(END_MARK):]].append(event["ts"])
    pending = []
    for start, stop, name in ops:
        later = [t for t in ends.get(name, ()) if t >= start]
        pending.append((start, max(stop, min(later) if later else stop), name))
    runs = _union((e["ts"], e["ts"] + e["dur"]) for e in events if e["name"] == EXECUTION)
    tails: collections.Counter = collections.Counter()
    for gap_start, gap_end in _gaps(_union((start, stop) for start, stop, _ in ops), runs):
        cuts = sorted({gap_start, gap_end} | {done for _, done, _ in pending if gap_start < done < gap_end})
        for left, right in zip(cuts, cuts[1:]):
            owners = [name for start, done, name in pending if start <= left and done >= right]
            for name in owners or [BETWEEN_OPS]:
                tails[name] += (right - left) / max(len(owners), 1)
    return tails


def trace_events(trace_dir: str) -> list[dict]:
    """The events of the Perfetto trace `jax.profiler` wrote under `trace_dir`."""
    path = sorted(glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "perfetto_trace.json.gz")))[-1]
    with gzip.open(path) as handle:
        trace = json.load(handle)
    return trace["traceEvents"] if isinstance(trace, dict) else trace


def rendezvous(events, steps: int, collectives, stall_us: float = 1000.0) -> dict | None:
    """How long the cross-device collectives named in `collectives` took, event by event, in
    a trace's `events` (`trace_events`).

    On a CPU each device runs its own copy of a collective, which returns when every device
    has arrived: with the devices in step its time is the rendezvous itself, and a long one
    means a device was held up (its core busy elsewhere). The median tells the first, the
    time in events over `stall_us` the second.

    Returns:
      None if `events` has no such event, else {"per_step": events per step (devices x
      collectives), "median_us": the median event, "ms": milliseconds per step in all of
      them, "stall_us", "stall_ms": of "ms", in events longer than `stall_us`}.
    """
    durations = sorted(event["dur"] for event in events if event.get("ph") == "X" and event["name"] in collectives)
    if not durations:
        return None
    return {"per_step": len(durations) / steps, "median_us": statistics.median(durations),
            "ms": sum(durations) / 1e3 / steps, "stall_us": stall_us,
            "stall_ms": sum(d for d in durations if d > stall_us) / 1e3 / steps}


def op_times(events, steps: int) -> tuple[collections.Counter, collections.Counter, bool]:
    """Milliseconds per step of each event in a Perfetto trace's `events` (`trace_events`).

    Returns:
      (totals by event name, of which after the op's own event, on_device). On a CPU
      everything runs in the process "/host:CPU": XLA ops and runtime events are all counted,
      and `profile` keeps those that name an HLO instruction; an op's total includes the time
      it ran on after its event (`async_tails`). With a GPU the trace has device processes
      ("/device:GPU:0 ..."): only their events count (on_device is True), and of those only
      the line "XLA Ops" (one event per HLO instruction, cuBLAS calls included) where the
      trace has one, so that a kernel is not counted twice. The GPU branch is tested on
      hand-made traces only.
    """
    names = {(event["name"], event.get("pid"), event.get("tid")): event.get("args", {}).get("name", "")
             for event in events if event.get("ph") == "M"}
    device_pids = {pid for (kind, pid, _), name in names.items() if kind == "process_name" and name.startswith("/device:")}
    op_lines = {(pid, tid) for (kind, pid, tid), name in names.items()
                if kind == "thread_name" and pid in device_pids and name == "XLA Ops"}
    counted = [event for event in events if event.get("ph") == "X" and (
        not device_pids or (event.get("pid"), event.get("tid")) in op_lines
        or (not op_lines and event.get("pid") in device_pids))]
    totals: collections.Counter = collections.Counter()
    for event in counted:
        totals[event["name"]] += event["dur"] / 1e3 / steps
    after = collections.Counter() if device_pids else \
        collections.Counter({name: us / 1e3 / steps for name, us in async_tails(counted).items()})
    totals.update(after)
    return totals, after, bool(device_pids)


def profile(model: str, batch_size: int, grads: str, steps: int = 5, top: int = 20,
            compute_dtype: str = "float32") -> dict:
    """Per-op times of nnjax's `grads` train step of `model` at `batch_size` (synthetic data),
    in `compute_dtype`.

    Returns:
      {"model", "batch_size", "grads", "compute_dtype", "step_ms" (wall, unprofiled), "ops_ms" (sum of the XLA
      ops' times per step, `BETWEEN_OPS` included), "after_ms" (of it, time ops ran on after
      their events, `async_tails`, `BETWEEN_OPS` not included), "ops": [{"name", "ms", "after_ms", "share", "what"}] for
      the `top` slowest ops, "kinds_ms": {kind: ms} summed over all ops (`op_kind`),
      "collectives": `rendezvous` of its cross-device collectives, or None}.
    """
    images, labels = common.synthetic_mnist(batch_size * 4)
    data = common.cut_epoch(images, labels, batch_size, 4)
    step, trained, device_data, batches, devices = nnjax_rows._setup(model, data, 0.01, grads,
                                                                     training.make_train_step, compute_dtype)
    carry = nnjax_rows._fresh_carry(trained, devices)
    compiled = training.compile_ahead(step, carry, device_data, batches, donate=True, model_kind=model)
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
        events = trace_events(trace_dir)
    totals, after, on_device = op_times(events, steps)
    described = [(name, ms, _describe(hlo, name, on_device)) for name, ms in totals.most_common()]
    waits = rendezvous(events, steps, {name for name, _, what in described if what and op_kind(what) == COLLECTIVES})
    ops_ms = sum(ms for _, ms, what in described if what)
    ops = [{"name": name, "ms": ms, "after_ms": after.get(name, 0.0), "share": ms / ops_ms, "what": what}
           for name, ms, what in described if what]
    kinds: collections.Counter = collections.Counter()
    for op in ops:
        kinds[op_kind(op["what"])] += op["ms"]
    return {"model": model, "batch_size": batch_size, "grads": grads, "compute_dtype": compute_dtype,
            "step_ms": step_ms, "ops_ms": ops_ms,
            "after_ms": sum(op["after_ms"] for op in ops if op["name"] != BETWEEN_OPS), "ops": ops[:top],
            "kinds_ms": dict(kinds.most_common()), "collectives": waits}


def _describe(hlo: str, name: str, on_device: bool) -> str:
    """What profile prints for the trace event `name`; "" for an event that is no op."""
    if name == BETWEEN_OPS:
        return IDLE
    return _fused_ops(hlo, name) or (LIBRARY_KERNEL if on_device else "")


def op_kind(what: str) -> str:
    """A coarse class of an XLA op from its `_fused_ops` description."""
    if what == LIBRARY_KERNEL:
        return "library kernels"
    if what == IDLE:
        return "runtime"
    shape = re.match(SHAPE, what).group(0)
    fused = what[len(shape):].split()
    if any(op in fused for op in COLLECTIVE_OPS):
        return COLLECTIVES
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
    lines = [f"\nnnjax {result['grads']} train step ({result['compute_dtype']}), {result['model'].upper()} "
             f"batch {result['batch_size']}: "
             f"{result['step_ms']:.1f} ms per step (best of runs); XLA ops sum to {result['ops_ms']:.1f} ms per step "
             f"({result['after_ms']:.1f} ms of it after the ops' own events: library calls finishing on the thread pool)",
             f"{'ms/step':>8s} {'after':>6s} {'share':>6s}  {'op':34s} output shape, fused operations"]
    for op in result["ops"]:
        lines.append(f"{op['ms']:8.2f} {op['after_ms']:6.2f} {100 * op['share']:5.1f}%  {op['name'][:34]:34s} "
                     f"{op['what'][:110]}")
    waits = result["collectives"]
    if waits:
        lines.append(f"cross-device collectives: {waits['per_step']:.0f} events per step (each device runs its own), "
                     f"median {waits['median_us']:.0f} us, {waits['ms']:.2f} ms per step summed over devices, "
                     f"{waits['stall_ms']:.2f} ms of it in events over {waits['stall_us']:.0f} us (a device held up)")
    lines.append("by kind: " + ", ".join(f"{kind} {ms:.1f} ms ({100 * ms / result['ops_ms']:.0f}%)"
                                         for kind, ms in result["kinds_ms"].items()))
    return "\n".join(lines)
