"""Does bfloat16 pay on this machine? The MLP's largest matrix products, float32 against bfloat16.

Times layer 1's products of the chapter's MLP (a batch of 784-pixel inputs, 128 units) as
XLA compiles them: the forward Z = X W^T and the weight gradient dW = Delta^T X, with the
transposed operand left to the product (as written) and written out as its own array
(`nnjax.layers.dense.written_transpose`, what nnjax's mixed precision does), each in float32
and with bfloat16 operands summed in float32. On a CPU with AMX or AVX512-BF16 the written-out
bfloat16 products run faster than float32 ones; without those instructions they run slower,
and ``compute_dtype="bfloat16"`` does not pay there. The last lines answer the question: per
batch size and product, the fastest bfloat16 form against the fastest float32 one.

    python scripts/bench_products.py                      # batch 128 and 1024
    python scripts/bench_products.py --batch-sizes 512 --calls 50
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from nnjax.atomic import write_json  # noqa: E402
from nnjax.layers.dense import mixed_matmul, written_transpose  # noqa: E402

N_IN, N_OUT = 784, 128
PRODUCTS = {
    "forward X W^T, W^T in the product": lambda X, W, Delta, dtype: mixed_matmul(X, W.T, dtype, jnp.float32),
    "forward X W^T, W^T written out": lambda X, W, Delta, dtype: mixed_matmul(X, written_transpose(W), dtype,
                                                                              jnp.float32),
    "dW = Delta^T X, Delta^T in the product": lambda X, W, Delta, dtype: mixed_matmul(Delta.T, X, dtype,
                                                                                      jnp.float32),
    "dW = Delta^T X, Delta^T written out": lambda X, W, Delta, dtype: mixed_matmul(written_transpose(Delta), X,
                                                                                   dtype, jnp.float32),
}
"""The products timed, as functions of X (m, 784) given in the operands' dtype (in a training
step the batch gather or the previous layer writes it so), float32 W (128, 784) and Delta
(m, 128), and the operands' dtype: the casts of W and Delta are part of each timing, as in a
training step."""


def timed_product(fn, arrays, dtype, calls: int) -> tuple[float, float]:
    """Best and median seconds of `calls` calls of the jitted product (after one warm-up)."""
    jitted = jax.jit(lambda X, W, Delta: fn(X, W, Delta, dtype))
    X, W, Delta = arrays
    arrays = (X.astype(dtype), W, Delta)
    jax.block_until_ready(jitted(*arrays))
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(jitted(*arrays))
        times.append(time.perf_counter() - start)
    times.sort()
    return times[0], times[len(times) // 2]


def measure(batch_sizes, calls: int) -> list[dict]:
    """One record per (batch size, product, dtype): best/median ms and GFLOP/s at the best."""
    rows = []
    for m in batch_sizes:
        keys = jax.random.split(jax.random.key(0), 3)
        arrays = (jax.random.normal(keys[0], (m, N_IN)), jax.random.normal(keys[1], (N_OUT, N_IN)),
                  jax.random.normal(keys[2], (m, N_OUT)))
        flops = 2 * m * N_IN * N_OUT
        for name, fn in PRODUCTS.items():
            for dtype in ("float32", "bfloat16"):
                best, median = timed_product(fn, arrays, jnp.dtype(dtype), calls)
                rows.append({"batch_size": m, "product": name, "dtype": dtype, "best_ms": 1e3 * best,
                             "median_ms": 1e3 * median, "gflops_at_best": flops / best / 1e9})
    return rows


def format_table(rows: list[dict]) -> str:
    """The records as a table, with bfloat16's speed-up over float32 per product."""
    lines = [f"{'batch':>5s}  {'product':40s} {'float32 ms':>11s} {'GFLOP/s':>8s} {'bfloat16 ms':>12s} "
             f"{'GFLOP/s':>8s} {'bf16 speed-up':>13s}"]
    for f32, bf16 in zip(rows[0::2], rows[1::2]):
        lines.append(f"{f32['batch_size']:5d}  {f32['product']:40s} {f32['best_ms']:11.3f} "
                     f"{f32['gflops_at_best']:8.0f} {bf16['best_ms']:12.3f} {bf16['gflops_at_best']:8.0f} "
                     f"{f32['best_ms'] / bf16['best_ms']:12.2f}x")
    return "\n".join(lines)


def verdict(rows: list[dict]) -> str:
    """Per batch size, the forward's and the weight gradient's fastest bfloat16 form against
    their fastest float32 form (each precision in its own best form), and the answer."""
    lines, ratios = [], []
    for m in sorted({r["batch_size"] for r in rows}):
        for kind in ("forward", "dW"):
            best = {dtype: min(r["best_ms"] for r in rows if r["batch_size"] == m and r["dtype"] == dtype
                               and r["product"].startswith(kind)) for dtype in ("float32", "bfloat16")}
            ratios.append(best["float32"] / best["bfloat16"])
            lines.append(f"batch {m:5d}  {kind:7s}  fastest float32 {best['float32']:.3f} ms, fastest bfloat16 "
                         f"{best['bfloat16']:.3f} ms: bfloat16 {ratios[-1]:.2f}x")
    answer = ("bfloat16 pays here" if min(ratios) > 1.1 else "bfloat16 does not pay here" if max(ratios) < 1.0
              else "bfloat16 pays for some of these products only")
    return "\n".join(lines + [f"{answer} (compute_dtype='bfloat16' speeds these products up "
                               f"{min(ratios):.2f}-{max(ratios):.2f}x)"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default="128,1024", help="comma-separated batch sizes m")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per product; best and median kept")
    parser.add_argument("--out", default=None, help="also write the records as JSON here")
    args = parser.parse_args(argv)
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        parser.error(f"--batch-sizes={args.batch_sizes!r}: expected comma-separated integers")
    if min(batch_sizes) < 1 or args.calls < 1:
        parser.error("--batch-sizes and --calls must be >= 1")
    print(f"bench_products: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}; "
          f"best of {args.calls} calls", flush=True)
    rows = measure(batch_sizes, args.calls)
    print(format_table(rows))
    print(verdict(rows))
    if args.out:
        write_json(args.out, {"jax": jax.__version__, "backend": jax.default_backend(), "rows": rows})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
