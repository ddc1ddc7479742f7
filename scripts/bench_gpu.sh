#!/usr/bin/env bash
# Every GPU measurement of docs/benchmarks.md in one go, for a GPU lent for a few minutes.
#
#   scripts/bench_gpu.sh OUT_DIR [PYTHON]
#
# Runs, each part time-boxed so that one slow or failing part cannot cost the others:
#   1. the CNN's time to 99% test accuracy (3 seeds): the GPU settings in float32 and in
#      bfloat16 mixed precision, and the CPU's settings (batch 128);
#   2. the MLP's time to 98%;
#   3. bench.py's throughput tables, CNN then MLP, batch 128 and 1024, scan epochs, for the
#      frameworks in $BENCH_FRAMEWORKS (default nnjax,raw_jax,torch: on an H200 each JAX row
#      took 5-30 s to compile, so with Flax, Equinox and torch.compile the tables need about
#      10 minutes more; BENCH_FRAMEWORKS=nnjax,raw_jax,flax,equinox,torch,torch_compile).
# Each part writes its JSON and its log into OUT_DIR; gpu.txt says which GPU and JAX ran.
# MNIST must be prepared where nnjax looks ($NNJAX_DATA_DIR, else ~/.cache/nnjax/mnist).
set -u
out=${1:?usage: scripts/bench_gpu.sh OUT_DIR [PYTHON]}
python=${2:-python}
cd "$(dirname "$0")/.."
mkdir -p "$out"

part() {  # part NAME SECONDS COMMAND...: runs COMMAND with a time limit, output in NAME.log
    local name=$1 seconds=$2
    shift 2
    local start=$SECONDS
    timeout "$seconds" "$@" > "$out/$name.log" 2>&1
    echo "$name: exit $? after $((SECONDS - start)) s (limit $seconds s)" | tee -a "$out/parts.txt"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$python" -c "import jax; print('jax', jax.__version__, jax.devices())"; } > "$out/gpu.txt" 2>&1

frameworks=${BENCH_FRAMEWORKS:-nnjax,raw_jax,torch}
tta="$python scripts/bench_time_to_accuracy.py"
part tta_cnn_bf16 80 $tta --models cnn --out "$out/tta_cnn_bf16.json"
part tta_cnn_f32 80 $tta --models cnn --set cnn.compute_dtype=float32 --out "$out/tta_cnn_f32.json"
part tta_cnn_b128 80 $tta --models cnn --set cnn.batch_size=128 --set cnn.epochs=3 --set cnn.lr=3e-3 \
    --set cnn.label_smoothing=0 --set cnn.warmup_epochs=0.2 --set cnn.eval_every=25 --out "$out/tta_cnn_b128.json"
part tta_mlp 50 $tta --models mlp --out "$out/tta_mlp.json"
part bench_cnn 240 "$python" scripts/bench.py --models cnn --frameworks "$frameworks" --modes scan \
    --repeats 3 --out "$out/bench_cnn.json" --markdown "$out/bench_cnn.md"
part bench_mlp 120 "$python" scripts/bench.py --models mlp --frameworks "$frameworks" --modes scan \
    --repeats 3 --out "$out/bench_mlp.json" --markdown "$out/bench_mlp.md"
