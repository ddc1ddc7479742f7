#!/usr/bin/env bash
# Every GPU measurement of docs/benchmarks.md, for a GPU lent for a few minutes.
#
#   scripts/bench_gpu.sh OUT_DIR [PYTHON]
#   BENCH_PARTS=bench_cnn_1024,tta_mlp scripts/bench_gpu.sh OUT_DIR     # only those parts
#
# Parts, in this order, each time-boxed so that one slow or failing part cannot cost the others:
#   tta_cnn_bf16, tta_cnn_f32, tta_cnn_b128 (100 s each): the CNN's time to 99% test accuracy
#       (3 seeds): the GPU settings in bfloat16 mixed precision and in float32, and the CPU's
#       settings (batch 128);
#   tta_mlp (45 s): the MLP's time to 98%;
#   bench_cnn_128 (200 s), bench_cnn_1024 (300 s), bench_mlp_128, bench_mlp_1024 (150 s each):
#       bench.py's throughput table of one model and batch size, scan epochs, for
#       $BENCH_FRAMEWORKS (default: every framework, torch.compile with CUDA graphs included),
#       3 interleaved rounds. The JAX rows are compiled 8 at a time (--compile-workers 8); on an
#       H100 host the 5 rows of one table still took 60-112 s together, hence a part per table,
#       and `torch.compile`'s child process compiles again in every round (about 60 s a round
#       for the CNN at batch 1024: 200 s ran out after its first round);
#   bench_mlp_1024_bf16 (150 s), bench_cnn_128_bf16 (200 s): the MLP's table at batch 1024 and
#       the CNN's at 128 with every row in its own bfloat16 mixed precision (`bench.py
#       --compute-dtype bfloat16`; the CNN's own mixed precision, new in the fifteenth session,
#       is unmeasured on a GPU: until then its bfloat16 ran on copies of the parameters);
#   profile (150 s): where the time of nnjax's train steps goes at batch 1024, kernel by kernel
#       (`bench.py --profile`), both models: the MLP trails the JAX peers on a GPU.
# All parts together run past one device call's 10 minutes: choose with BENCH_PARTS.
# Each part writes its JSON and its log into OUT_DIR, and parts.txt its exit status and time;
# gpu.txt says which GPU and JAX ran. MNIST must be prepared where nnjax looks
# ($NNJAX_DATA_DIR, else ~/.cache/nnjax/mnist). The device tool returns at most 8 files per
# call: write OUT_DIR outside $OUT and set BENCH_ARCHIVE=$OUT/gpu.tgz, which is rewritten after
# every part, so that a caller stopped at its time limit keeps the parts that finished.
set -u
out=${1:?usage: scripts/bench_gpu.sh OUT_DIR [PYTHON]}
python=${2:-python}
cd "$(dirname "$0")/.."
mkdir -p "$out"
parts=",${BENCH_PARTS:-tta_cnn_bf16,tta_cnn_f32,tta_cnn_b128,tta_mlp,bench_cnn_128,bench_cnn_1024,bench_mlp_128,bench_mlp_1024,bench_mlp_1024_bf16,bench_cnn_128_bf16,profile},"

part() {  # part NAME SECONDS COMMAND...: runs COMMAND with a time limit, output in NAME.log
    local name=$1 seconds=$2
    shift 2
    [[ $parts == *",$name,"* ]] || return 0
    local start=$SECONDS
    timeout "$seconds" "$@" > "$out/$name.log" 2>&1
    echo "$name: exit $? after $((SECONDS - start)) s (limit $seconds s)" | tee -a "$out/parts.txt"
    archive
}

archive() {  # OUT_DIR as a .tgz at $BENCH_ARCHIVE, if set, written atomically
    [[ -n ${BENCH_ARCHIVE:-} ]] || return 0
    tar czf "$BENCH_ARCHIVE.part" -C "$(dirname "$out")" "$(basename "$out")" && mv "$BENCH_ARCHIVE.part" "$BENCH_ARCHIVE"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$python" -c "import jax; print('jax', jax.__version__, jax.devices())"; } > "$out/gpu.txt" 2>&1

frameworks=${BENCH_FRAMEWORKS:-nnjax,raw_jax,flax,equinox,torch,torch_compile}
tta="$python scripts/bench_time_to_accuracy.py"
bench="$python scripts/bench.py --modes scan --compile-workers 8 --repeats 3 --compile-timeout 60"
part tta_cnn_bf16 100 $tta --models cnn --out "$out/tta_cnn_bf16.json"
part tta_cnn_f32 100 $tta --models cnn --set cnn.compute_dtype=float32 --out "$out/tta_cnn_f32.json"
part tta_cnn_b128 100 $tta --models cnn --settings cpu --out "$out/tta_cnn_b128.json"
part tta_mlp 45 $tta --models mlp --out "$out/tta_mlp.json"
for model_batch in cnn:128:200 cnn:1024:300 mlp:128:150 mlp:1024:150; do
    IFS=: read -r model batch seconds <<< "$model_batch"
    name=bench_${model}_$batch
    part "$name" "$seconds" $bench --models "$model" --batch-sizes "$batch" --frameworks "$frameworks" \
        --out "$out/$name.json" --markdown "$out/$name.md"
done
for model_batch in mlp:1024:150 cnn:128:200; do
    IFS=: read -r model batch seconds <<< "$model_batch"
    name=bench_${model}_${batch}_bf16
    part "$name" "$seconds" $bench --models "$model" --batch-sizes "$batch" --frameworks "$frameworks" \
        --compute-dtype bfloat16 --out "$out/$name.json" --markdown "$out/$name.md"
done
part profile 150 "$python" scripts/bench.py --profile --models mlp,cnn --batch-sizes 1024 --out "$out/profile.json"
