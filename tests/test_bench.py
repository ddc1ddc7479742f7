"""Smoke tests of the benchmark scripts: each runs a few steps on synthetic data and writes its
JSON (no timing assertions: the numbers depend on the machine and its load)."""
import gzip
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
PEERS = ("Flax NNX", "Equinox", "PyTorch")
PRODUCTS = ("forward X W^T, W^T in the product", "forward X W^T, W^T written out",
            "dW = Delta^T X, Delta^T in the product", "dW = Delta^T X, Delta^T written out")


def run_script(script, out, *args):
    done = subprocess.run([sys.executable, str(SCRIPTS / script), *args, "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def rows_by_name(results):
    return {row["name"]: row for config in results["configs"] for row in config["rows"]}


@pytest.fixture(scope="module")
def mlp_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "mlp.json"
    return run_script("bench.py", out, "--data", "synthetic", "--models", "mlp", "--batch-sizes", "8",
                      "--steps", "2", "--repeats", "1", "--matmul-size", "64",
                      "--frameworks", "nnjax,raw_jax,flax,equinox,torch")


def test_bench_mlp_has_nnjax_raw_jax_and_peer_rows(mlp_bench):
    results, stdout = mlp_bench
    rows = rows_by_name(results)
    for name in ("nnjax autodiff loop", "nnjax autodiff scan", "nnjax manual loop", "nnjax manual scan",
                 "raw JAX loop", "raw JAX scan"):
        assert rows[name]["status"] == "measured", rows[name]
        assert rows[name]["samples_per_s"] > 0 and rows[name]["warmup_s"] > 0
        assert 0 < rows[name]["vs_fastest"] <= 1
        assert name in stdout
    peers = [row for name, row in rows.items() if name.startswith(PEERS)]
    assert {name.split()[0] for name in rows if name.startswith(PEERS)} == {"Flax", "Equinox", "PyTorch"}
    for row in peers:
        assert row["status"] == "measured" or row["status"].startswith("skipped"), row
        if row["status"] == "measured":
            assert row["samples_per_s"] > 0


def test_bench_mlp_reports_ratios_and_flop_fraction(mlp_bench):
    results, stdout = mlp_bench
    config = results["configs"][0]
    assert (config["model"], config["batch_size"], config["steps"]) == ("mlp", 8, 2)
    assert results["meta"]["matmul_flops_per_s"] > 0 and results["meta"]["data"].startswith("synthetic")
    rows = rows_by_name(results)
    assert rows["raw JAX scan"]["vs_raw_jax_scan"] == pytest.approx(1.0)
    flops = 2 * 8 * (3 * (784 * 128 + 128 * 64 + 64 * 10) - 784 * 128)
    assert rows["nnjax autodiff loop"]["step_flops"] == flops
    assert rows["nnjax autodiff loop"]["flop_fraction"] > 0
    summary = config["summary"]
    assert summary["manual_over_autodiff_loop"] > 0 and summary["first_step_s"] > 0
    assert "Targets" in stdout and "manual/autodiff" in stdout


def test_bench_cnn_nnjax_loop_rows(tmp_path):
    results, _ = run_script("bench.py", tmp_path / "cnn.json", "--data", "synthetic", "--models", "cnn",
                            "--batch-sizes", "4", "--steps", "2", "--repeats", "1", "--matmul-size", "64",
                            "--frameworks", "nnjax", "--modes", "loop")
    rows = rows_by_name(results)
    assert set(rows) == {"nnjax autodiff loop", "nnjax manual loop"}
    assert all(row["status"] == "measured" and row["samples_per_s"] > 0 for row in rows.values()), rows
    assert results["configs"][0]["summary"]["manual_over_autodiff_loop"] > 0


def test_bench_in_bfloat16_runs_every_row_in_mixed_precision(tmp_path):
    """--compute-dtype bfloat16: nnjax's own mixed precision, and each peer's (smoke run; the
    peers are skipped where the optional extra is not installed)."""
    results, stdout = run_script("bench.py", tmp_path / "bf16.json", "--data", "synthetic", "--models", "mlp",
                                 "--batch-sizes", "8", "--steps", "2", "--repeats", "1", "--matmul-size", "64",
                                 "--frameworks", "nnjax,raw_jax,flax,equinox,torch", "--modes", "scan",
                                 "--compute-dtype", "bfloat16")
    assert results["meta"]["compute_dtype"] == "bfloat16" and "bfloat16" in stdout
    rows = rows_by_name(results)
    for name in ("nnjax autodiff scan", "nnjax manual scan", "raw JAX scan"):
        assert rows[name]["status"] == "measured" and rows[name]["samples_per_s"] > 0, rows[name]
    for name, row in rows.items():
        assert row["status"] == "measured" or row["status"].startswith("skipped"), row


def test_bench_products_times_each_product_in_both_dtypes(tmp_path):
    results, stdout = run_script("bench_products.py", tmp_path / "products.json", "--batch-sizes", "8",
                                 "--calls", "2")
    rows = results["rows"]
    assert {(r["product"], r["dtype"]) for r in rows} == {(p, d) for p in PRODUCTS for d in ("float32", "bfloat16")}
    assert all(r["batch_size"] == 8 and 0 < r["best_ms"] <= r["median_ms"] and r["gflops_at_best"] > 0 for r in rows)
    assert "bf16 speed-up" in stdout and "Delta^T written out" in stdout
    answer = stdout.strip().splitlines()[-2]
    assert answer.startswith("bfloat16 ") and "speeds these products up" in answer
    ratio = min(r["best_ms"] for r in rows if r["dtype"] == "float32" and r["product"].startswith("dW")) / \
        min(r["best_ms"] for r in rows if r["dtype"] == "bfloat16" and r["product"].startswith("dW"))
    assert "dW       fastest float32" in stdout and f"bfloat16 {ratio:.2f}x" in stdout


@pytest.fixture
def bench_module(monkeypatch):
    """scripts/bench.py imported in-process."""
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import bench

    return bench


def test_missing_peer_is_reported_skipped_not_installed(bench_module, monkeypatch):
    from bench_peers import common

    monkeypatch.setitem(sys.modules, "flax", None)
    monkeypatch.delitem(sys.modules, "bench_peers.flax_nnx", raising=False)
    args = bench_module.parse_args(["--frameworks", "flax"])
    images, labels = common.synthetic_mnist(8)
    rows = bench_module.jax_rows("flax", "mlp", common.cut_epoch(images, labels, 4, 2), args)
    assert rows == [{"name": "Flax NNX", "family": "peer", "status": "skipped (not installed: flax)"}]


def test_arguments_each_name_their_problem_and_the_profile_keeps_its_own_file(bench_module, capsys):
    assert bench_module.parse_args([]).out == "bench.json"
    assert bench_module.parse_args(["--profile"]).out == "profile.json"  # never the table's results
    assert bench_module.parse_args(["--profile", "--out", "p.json"]).out == "p.json"
    for argv, message in ((["--repeats", "0"], "--repeats=0: must be >= 1"),
                          (["--batch-sizes", "1,128"], "--batch-sizes=1,128: each must be >= 2"),
                          (["--frameworks", ","], "--frameworks=',': no names given"),
                          (["--profile", "--steps", "5", "--markdown", "t.md"],
                           "--profile times nnjax's step alone; it takes no --steps, --markdown")):
        with pytest.raises(SystemExit):
            bench_module.parse_args(argv)
        assert message in capsys.readouterr().err, argv


def test_timed_epochs_are_interleaved_across_rows_in_rotating_order(bench_module, monkeypatch):
    from bench_peers import common

    bench = bench_module
    order = []

    def fake_rows(framework, model, data, args):
        return [common.Trainer(name, "nnjax", lambda: None, lambda name=name: order.append(name), 1.0)
                for name in ("a", "b", "c")]

    monkeypatch.setattr(bench, "jax_rows", fake_rows)
    monkeypatch.setitem(sys.modules, "torch", None)  # PyTorch missing, as in CI: its rows are skipped
    monkeypatch.delitem(sys.modules, "bench_peers.torch_peer", raising=False)
    args = bench.parse_args(["--frameworks", "nnjax,torch,torch_compile", "--repeats", "3", "--models", "mlp"])
    images, labels = common.synthetic_mnist(8)
    rows = bench.run_config("mlp", 4, images, labels, args)
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert [row["name"] for row in rows[:3]] == ["a", "b", "c"]
    assert all(row["status"] == "measured" and len(row["epoch_s"]) == 3 for row in rows[:3]), rows
    torch_rows = ["PyTorch eager"] + (["PyTorch eager 1 thread"] if (os.cpu_count() or 1) > 1 else []) + ["PyTorch compile"]
    assert {row["name"]: row["status"] for row in rows[3:]} == {
        name: "skipped (not installed: torch)" for name in torch_rows}


@pytest.mark.parametrize("workers", [1, 2])
def test_compile_workers_warm_rows_up_together_and_keep_their_order(bench_module, monkeypatch, workers):
    """Two rows whose warm-ups each wait for the other: with 2 workers both finish, with 1 the
    first times out and becomes a failed row (a broken barrier); the order is kept either way."""
    import threading

    from bench_peers import common

    bench = bench_module
    meeting = threading.Barrier(2, timeout=5 if workers > 1 else 0.5)

    def fake_rows(framework, model, data, args):
        return [common.Trainer(name, "nnjax", meeting.wait, lambda: None, 1.0) for name in ("a", "b")]

    monkeypatch.setattr(bench, "jax_rows", fake_rows)
    args = bench.parse_args(["--frameworks", "nnjax", "--repeats", "1", "--compile-workers", str(workers)])
    images, labels = common.synthetic_mnist(8)
    rows = bench.run_config("mlp", 4, images, labels, args)
    assert [row["name"] for row in rows] == ["a", "b"]
    expected = "measured" if workers > 1 else "failed: BrokenBarrierError"
    assert all(row["status"].startswith(expected) for row in rows), rows


def test_torch_compile_past_its_time_box_is_skipped(tmp_path, bench_module):
    pytest.importorskip("torch")
    bench = bench_module
    from bench_peers import common

    args = bench.parse_args(["--compile-timeout", "0.1", "--repeats", "1"])
    images, labels = common.synthetic_mnist(8)
    data = common.cut_epoch(images, labels, 4, 2)
    epoch_file = tmp_path / "epoch.npz"
    np.savez(epoch_file, images=data.images, labels=data.labels, pixels=data.pixels)
    args.frameworks = ["torch_compile"]
    [entry] = bench.torch_entries("mlp", data, args, str(epoch_file))
    bench.torch_epoch(entry, args, eager_s=0.0)
    assert entry["name"] == "PyTorch compile"
    # the child either outlives its 10 s box or reports a compile time over 0.1 s: skipped either way
    assert entry["status"].startswith(("skipped (did not finish within its 10 s time box; compile limit 0 s",
                                       "skipped (compile took")), entry


def test_torch_compile_uses_cuda_graphs_on_a_gpu_and_falls_back_if_refused(tmp_path, bench_module, monkeypatch,
                                                                             capsys):
    """On "cuda" the compiled row asks for mode "reduce-overhead"; a first step that raises in
    that mode is measured again in the default mode, and the row's note says why."""
    pytest.importorskip("torch")
    from bench_peers import common, torch_peer

    assert torch_peer.compile_mode("cuda") == "reduce-overhead" and torch_peer.compile_mode("cpu") is None
    images, labels = common.synthetic_mnist(8)
    data = common.cut_epoch(images, labels, 4, 2)
    epoch_file = tmp_path / "epoch.npz"
    np.savez(epoch_file, images=data.images, labels=data.labels, pixels=data.pixels)
    modes = []

    def make_trainer(model, data, lr, compiled, threads=None, device="cpu", mode=None, compute_dtype="float32"):
        modes.append(mode)

        def first_step():
            if mode is not None:
                raise RuntimeError("cudagraphs refused")

        return common.Trainer("PyTorch compile", "peer", first_step, lambda: None, None, note="stand-in")

    monkeypatch.setattr(torch_peer, "compile_mode", lambda device: "reduce-overhead")
    monkeypatch.setattr(torch_peer, "make_trainer", make_trainer)
    assert torch_peer.main(["--model", "mlp", "--epoch-file", str(epoch_file), "--repeats", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert modes == ["reduce-overhead", None] and len(result["epoch_s"]) == 2
    assert "mode reduce-overhead failed: RuntimeError: cudagraphs refused" in result["note"]


@pytest.mark.parametrize("epoch_mode,dtype", [("scan", "float32"), ("loop", "bfloat16")])
def test_time_to_accuracy_smoke(tmp_path, epoch_mode, dtype):
    results, stdout = run_script("bench_time_to_accuracy.py", tmp_path / "tta.json", "--data", "synthetic",
                                 "--models", "mlp", "--seeds", "2", "--steps", "2", "--eval-every", "1",
                                 "--epoch-mode", epoch_mode, "--set", "mlp.batch_size=16",
                                 "--set", f"mlp.compute_dtype={dtype}")
    summary = results["models"]["mlp"]
    assert summary["settings"]["batch_size"] == 16 and summary["settings"]["compute_dtype"] == dtype
    assert summary["compile_s"] > 0 and [run["seed"] for run in summary["runs"]] == [0, 1]
    for run in summary["runs"]:
        assert run["epoch_mode"] == epoch_mode and run["train_s"] > 0
        assert run["steps"] == 2 and [point["step"] for point in run["curve"]] == [1, 2]
        assert all(0 <= point["test_accuracy"] <= 1 for point in run["curve"])
    assert summary["target"] == 0.98 and "mlp: time to 98% test accuracy" in stdout


def test_time_to_accuracy_settings_per_backend():
    sys.path.insert(0, str(SCRIPTS))
    import bench_time_to_accuracy as tta

    assert tta.default_settings("cpu") == tta.SETTINGS
    gpu = tta.default_settings("gpu")
    for model, changes in tta.GPU_SETTINGS.items():
        assert gpu[model] == {**tta.SETTINGS[model], **changes} and set(changes) <= set(tta.SETTINGS[model])


@pytest.mark.parametrize("argv, message", [
    (["--set", "mlp.lr=abc"], "--set 'mlp.lr=abc': lr takes a float, got 'abc'"),
    (["--set", "mlp.optimizer=foo"], "mlp settings: TrainConfig: optimizer='foo' is not allowed"),
    (["--set", "cnn.batch_size=0"], "cnn settings: TrainConfig: batch_size must be a positive int"),
    (["--eval-every", "0"], "--eval-every=0: must be >= 1"),
    (["--set", "mlp.eval_every=0"], "--set mlp.eval_every=0: must be >= 1"),
])
def test_time_to_accuracy_bad_settings_end_with_one_line(argv, message, capsys):
    sys.path.insert(0, str(SCRIPTS))
    import bench_time_to_accuracy as tta

    with pytest.raises(SystemExit) as exit_info:
        tta.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_bench_rejects_unknown_framework(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPTS / "bench.py"), "--frameworks", "keras"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "allowed: nnjax, raw_jax" in done.stderr


def test_gpu_script_runs_every_part_and_survives_a_failing_one(tmp_path):
    """scripts/bench_gpu.sh with a stand-in for Python that echoes its arguments and fails for
    the CNN's batch-1024 throughput part: every part still runs, each logged, each exit status recorded."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho "$@"\ncase "$*" in *"--models cnn --batch-sizes 1024 "*) exit 3;; esac\n')
    fake.chmod(0o755)
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(SCRIPTS / "bench_gpu.sh"), str(out), str(fake)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    parts = dict(line.split(": exit ") for line in (out / "parts.txt").read_text().splitlines())
    assert list(parts) == ["tta_cnn_bf16", "tta_cnn_f32", "tta_cnn_b128", "tta_mlp", "bench_cnn_128", "bench_cnn_1024",
                           "bench_mlp_128", "bench_mlp_1024", "bench_mlp_1024_bf16", "bench_cnn_128_bf16", "profile"]
    assert parts["bench_cnn_1024"].startswith("3 ") and all(
        status.startswith("0 ") for name, status in parts.items() if name != "bench_cnn_1024")
    for name in parts:
        logged = (out / f"{name}.log").read_text()
        assert f"--out {out}/{name}.json" in logged
        assert {"tta": "bench_time_to_accuracy.py", "bench": "bench.py --modes scan --compile-workers 8",
                "profile": "bench.py --profile --models mlp,cnn --batch-sizes 1024"}[name.split("_")[0]] in logged
    assert "compute_dtype=float32" in (out / "tta_cnn_f32.log").read_text()
    for name in ("bench_mlp_1024_bf16", "bench_cnn_128_bf16"):
        assert "--compute-dtype bfloat16" in (out / f"{name}.log").read_text()
    assert "--models mlp --batch-sizes 128 --frameworks nnjax,raw_jax,flax,equinox,torch,torch_compile" \
        in (out / "bench_mlp_128.log").read_text()

    chosen, archive = tmp_path / "chosen", tmp_path / "gpu.tgz"
    done = subprocess.run(["bash", str(SCRIPTS / "bench_gpu.sh"), str(chosen), str(fake)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "BENCH_PARTS": "tta_mlp,bench_mlp_1024", "BENCH_ARCHIVE": str(archive)})
    assert done.returncode == 0, done.stderr
    assert [line.split(":")[0] for line in (chosen / "parts.txt").read_text().splitlines()] == ["tta_mlp", "bench_mlp_1024"]
    with tarfile.open(archive) as packed:
        assert {"chosen/parts.txt", "chosen/tta_mlp.log", "chosen/bench_mlp_1024.log"} <= set(packed.getnames())


def test_profile_smoke(tmp_path):
    """`bench.py --profile`: per-op times of both nnjax train steps, as a table and as JSON."""
    results, stdout = run_script("bench.py", tmp_path / "profile.json", "--profile", "--models", "mlp",
                                 "--batch-sizes", "8", "--compute-dtype", "bfloat16")
    assert [(p["model"], p["batch_size"], p["grads"], p["compute_dtype"]) for p in results["profiles"]] == \
        [("mlp", 8, "autodiff", "bfloat16"), ("mlp", 8, "manual", "bfloat16")]
    for result in results["profiles"]:
        assert result["step_ms"] > 0 and result["ops"] and result["ops_ms"] > 0
        assert sum(op["share"] for op in result["ops"]) <= 1 + 1e-9
        assert "matrix products" in result["kinds_ms"]
    assert "nnjax manual train step (bfloat16), MLP batch 8" in stdout


def _write_trace(folder, events):
    run = folder / "plugins" / "profile" / "run1"
    run.mkdir(parents=True)
    with gzip.open(run / "perfetto_trace.json.gz", "wt") as handle:
        json.dump({"traceEvents": events}, handle)


def _metadata(kind, pid, name, tid=None):
    return {"ph": "M", "name": kind, "pid": pid, "tid": tid, "args": {"name": name}}


def test_profile_trace_counts_device_ops_once(tmp_path, bench_module):
    """On a CPU trace every event counts; on a GPU trace only the device's "XLA Ops" line
    (or, without one, all of the device's events), never the host's."""
    from bench_peers import profile_step

    def op(pid, tid, name, dur_us):
        return {"ph": "X", "pid": pid, "tid": tid, "name": name, "dur": dur_us, "ts": 0}

    _write_trace(tmp_path / "cpu", [_metadata("process_name", 1, "/host:CPU"),
                                    op(1, 7, "fusion.1", 4000), op(1, 7, "fusion.1", 2000), op(1, 8, "dot.2", 1000)])
    totals, after, on_device = profile_step.op_times(profile_step.trace_events(str(tmp_path / "cpu")), steps=2)
    assert not on_device and totals == {"fusion.1": 3.0, "dot.2": 0.5} and not after

    host, gpu = 1, 2
    _write_trace(tmp_path / "gpu", [
        _metadata("process_name", host, "/host:CPU"), _metadata("process_name", gpu, "/device:GPU:0 NVIDIA H100"),
        _metadata("thread_name", gpu, "XLA Ops", tid=3), _metadata("thread_name", gpu, "Stream #13", tid=4),
        op(host, 1, "fusion.1", 9000), op(gpu, 3, "fusion.1", 1000), op(gpu, 3, "custom-call.2", 3000),
        op(gpu, 4, "loop_fusion_kernel", 1000), op(gpu, 4, "sm90_xmma_gemm", 3000)])
    totals, after, on_device = profile_step.op_times(profile_step.trace_events(str(tmp_path / "gpu")), steps=1)
    assert on_device and totals == {"fusion.1": 1.0, "custom-call.2": 3.0} and not after

    _write_trace(tmp_path / "streams", [
        _metadata("process_name", gpu, "/device:GPU:0"), _metadata("thread_name", gpu, "Stream #13", tid=4),
        op(host, 1, "fusion.1", 9000), op(gpu, 4, "fusion.1", 1000), op(gpu, 4, "sm90_xmma_gemm", 3000)])
    totals, _, on_device = profile_step.op_times(profile_step.trace_events(str(tmp_path / "streams")), steps=1)
    assert on_device and totals == {"fusion.1": 1.0, "sm90_xmma_gemm": 3.0}
    assert profile_step.op_kind(profile_step.LIBRARY_KERNEL) == "library kernels"


def test_profile_books_asynchronous_library_work(tmp_path, bench_module):
    """A CPU op whose event ends before its work does (an Eigen product finishing on the thread
    pool, marked by a later "end: <op>" event) gets the idle time of the run until then."""
    from bench_peers import profile_step

    def event(name, ts, dur, tid=7, op=True):
        return {"ph": "X", "pid": 1, "tid": tid, "name": name, "ts": ts, "dur": dur,
                "args": {"hlo_op": name} if op else {}}

    # One run from 0 to 100 us: fusion.1 0-10, dot.2's call 10-12 with its work done at 60,
    # fusion.3 60-70 on another thread, conv.4 70-71 done at 90 while reduce.5 runs 75-80 on
    # the first thread (so 80-90 is conv.4's), then 90-100 with nothing pending.
    _write_trace(tmp_path / "cpu", [
        _metadata("process_name", 1, "/host:CPU"), event(profile_step.EXECUTION, 0, 100, tid=1, op=False),
        event("fusion.1", 0, 10), event("dot.2", 10, 2), event("end: dot.2", 60, 0, op=False),
        event("fusion.3", 60, 10, tid=8), event("conv.4", 70, 1), event("reduce.5", 75, 5),
        event("end: conv.4", 90, 0, op=False)])
    totals, after, _ = profile_step.op_times(profile_step.trace_events(str(tmp_path / "cpu")), steps=1)
    assert after == pytest.approx({"dot.2": 0.048, "conv.4": 0.004 + 0.010, profile_step.BETWEEN_OPS: 0.010})
    assert totals["dot.2"] == pytest.approx(0.050) and totals["conv.4"] == pytest.approx(0.015)
    assert totals["fusion.1"] == pytest.approx(0.010) and totals["reduce.5"] == pytest.approx(0.005)
    assert profile_step.op_kind(profile_step.IDLE) == "runtime"


def test_profile_books_cross_device_reductions_apart(bench_module):
    """A psum across devices (an all-reduce, tuple-shaped when XLA combines several) is
    described by its whole shape and booked as a cross-device collective, not element-wise
    work: with the batch split, a device's time there is mostly waiting for the others."""
    from bench_peers import profile_step
    hlo = ("%psum.184 = f32[1,1,64]{2,1,0} all-reduce(%x), channel_id=1, to_apply=%add\n"
           "%all-reduce.1 = (f32[64]{0}, f32[32]{0}) all-reduce(%a, %b), channel_id=2, to_apply=%add\n"
           "%fusion.3 = f32[8,8]{1,0} fusion(%y), kind=kLoop, calls=%fused_computation.3\n"
           "%fused_computation.3 (p: f32[8,8]) -> f32[8,8] {\n"
           "  %exponential.1 = f32[8,8]{1,0} exponential(%p)\n}\n")
    single = profile_step._fused_ops(hlo, "psum.184")
    combined = profile_step._fused_ops(hlo, "all-reduce.1")
    assert single == "f32[1,1,64]{2,1,0} all-reduce"
    assert combined == "(f32[64]{0}, f32[32]{0}) all-reduce"
    for what in (single, combined):
        assert profile_step.op_kind(what) == "cross-device collectives (waiting included)"
    assert profile_step.op_kind(profile_step._fused_ops(hlo, "fusion.3")) == "other element-wise"


def test_profile_times_each_rendezvous(tmp_path, bench_module):
    """`rendezvous` takes the named collectives' events one by one: their count per step, the
    median (the rendezvous with the devices in step) and the time in long ones (a device held
    up); other events do not count, and a trace without collectives gives None."""
    from bench_peers import profile_step

    def event(name, dur, tid):
        return {"ph": "X", "pid": 1, "tid": tid, "name": name, "ts": 0, "dur": dur, "args": {"hlo_op": name}}

    _write_trace(tmp_path / "cpu", [
        _metadata("process_name", 1, "/host:CPU"),
        event("psum.1", 100, 7), event("psum.1", 120, 8), event("psum.1", 3000, 7), event("psum.1", 90, 8),
        event("all-reduce.2", 500, 7), event("all-reduce.2", 510, 8), event("fusion.3", 9000, 7)])
    events = profile_step.trace_events(str(tmp_path / "cpu"))
    waits = profile_step.rendezvous(events, steps=2, collectives={"psum.1", "all-reduce.2"})
    assert waits["per_step"] == 3 and waits["median_us"] == pytest.approx(310)
    assert waits["ms"] == pytest.approx((100 + 120 + 3000 + 90 + 500 + 510) / 1e3 / 2)
    assert waits["stall_ms"] == pytest.approx(3000 / 1e3 / 2)
    assert profile_step.rendezvous(events, steps=2, collectives={"psum.9"}) is None
    line = profile_step.format_profile({
        "grads": "manual", "compute_dtype": "float32", "model": "cnn", "batch_size": 128, "step_ms": 24.0,
        "ops_ms": 40.0, "after_ms": 0.0, "ops": [], "kinds_ms": {profile_step.COLLECTIVES: 2.2},
        "collectives": waits})
    assert "cross-device collectives: 3 events per step" in line and "1.50 ms of it in events over 1000 us" in line
