"""Vanishing and exploding gradients: per-layer gradient norms of a deep MLP at initialization.

    python experiments/gradient_flow.py      # prints the tables, saves runs/gradient_flow/*.png

The chapter ("Gradient Flow and Vanishing/Exploding Gradients"): backpropagation multiplies
the gradient by a weight matrix and an activation derivative at every layer,
delta^[l] = (W^[l+1])^T delta^[l+1] * sigma'(z^[l]). If those factors are small the gradient
shrinks exponentially with depth (vanishing); if large, it grows (exploding).

For MLPs of depth L = 2..20 (L weight layers of width `--width`, softmax cross-entropy on a
batch of random inputs and labels), this measures ||dL/dW^[l]|| (Frobenius) for every layer l,
for sigmoid, tanh and ReLU hidden layers and three initializations:
  - N(0, 1): naive, too large;
  - N(0, 0.01^2): naive, too small (0.01 * randn, as in many early tutorials);
  - scaled: Xavier (variance 2 / (n_in + n_out)) for sigmoid and tanh, He (2 / n_in) for ReLU.
The gradients are computed in float64, so that exploding values stay finite.
"""
from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from _common import positive_int
from nnjax.activations import get_activation
from nnjax.atomic import write_figure, write_json
from nnjax.backprop import mlp_grads
from nnjax.losses import softmax_cross_entropy
from nnjax.network import mlp_init, mlp_logits

ACTIVATIONS = ("sigmoid", "tanh", "relu")
INITS = ("N(0,1)", "N(0,0.01^2)", "Xavier/He")
SCALED_INIT = {"sigmoid": "xavier", "tanh": "xavier", "relu": "he"}
NAIVE_STD = {"N(0,1)": 1.0, "N(0,0.01^2)": 0.01}
CLASSES = 10


def init_params(key, sizes: list[int], activation: str, init: str):
    """MLP params in float64: naive N(0, std^2) weights, or Xavier/He as suits `activation`."""
    if init in NAIVE_STD:
        keys = jax.random.split(key, len(sizes) - 1)
        return [{"W": NAIVE_STD[init] * jax.random.normal(k, (n_out, n_in), jnp.float64),
                 "b": jnp.zeros(n_out, jnp.float64)}
                for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:])]
    return mlp_init(key, sizes, SCALED_INIT[activation], dtype=jnp.float64)


def layer_gradient_norms(key, depth: int, width: int, batch: int, activation: str, init: str,
                         grads: str) -> np.ndarray:
    """||dL/dW^[l]||_F for l = 1..depth at initialization, L the batch's mean cross-entropy.

    Args:
      key: PRNG key for the weights, inputs and labels.
      depth: number of weight layers L (L - 1 hidden layers).
      width: inputs and hidden units per layer.
      batch: examples (standard-normal inputs, uniform random labels).
      activation: hidden activation name.
      init: one of `INITS`.
      grads: ``"autodiff"`` (jax.grad) or ``"manual"`` (`nnjax.backprop.mlp_grads`).

    Returns:
      float64 array (depth,).
    """
    init_key, x_key, y_key = jax.random.split(key, 3)
    sizes = [width] * depth + [CLASSES]
    params = init_params(init_key, sizes, activation, init)
    X = jax.random.normal(x_key, (batch, width), jnp.float64)
    Y = jax.nn.one_hot(jax.random.randint(y_key, (batch,), 0, CLASSES), CLASSES, dtype=jnp.float64)
    sigma = get_activation(activation)[0]
    if grads == "manual":
        g = mlp_grads(params, X, Y, sigma)
    else:
        loss = lambda p: jnp.mean(softmax_cross_entropy(
            jax.vmap(mlp_logits, in_axes=(None, 0, None))(p, X, sigma), Y))
        g = jax.grad(loss)(params)
    return np.array([float(jnp.linalg.norm(layer["W"])) for layer in g])


def measure(depths, width: int, batch: int, seed: int, grads: str) -> dict:
    """{(activation, init): {depth: per-layer norms}} for every combination."""
    with jax.enable_x64(True):
        return {(a, i): {d: layer_gradient_norms(jax.random.key(seed), d, width, batch, a, i, grads)
                         for d in depths}
                for a in ACTIVATIONS for i in INITS}


def first_layer_table(norms: dict, depths) -> str:
    """Rows (activation, init), columns depth L: ||dL/dW^[1]||, the gradient farthest from the loss."""
    header = f"{'activation':<10} {'init':<12}" + "".join(f"{'L=' + str(d):>9}" for d in depths)
    lines = [header, "-" * len(header)]
    for (activation, init), by_depth in norms.items():
        cells = "".join(f"{by_depth[d][0]:9.1e}" for d in depths)
        lines.append(f"{activation:<10} {init:<12}{cells}")
    return "\n".join(lines)


def layer_table(norms: dict, depth: int) -> str:
    """Rows (activation, init), columns layer l: ||dL/dW^[l]|| for the `depth`-layer MLP."""
    shown = sorted({1, 2, 3, depth // 2, depth - 2, depth - 1, depth} & set(range(1, depth + 1)))
    header = f"{'activation':<10} {'init':<12}" + "".join(f"{'l=' + str(l):>9}" for l in shown)
    lines = [header, "-" * len(header)]
    for (activation, init), by_depth in norms.items():
        cells = "".join(f"{by_depth[depth][l - 1]:9.1e}" for l in shown)
        lines.append(f"{activation:<10} {init:<12}{cells}")
    return "\n".join(lines)


def plot(norms: dict, depths, path: str) -> None:
    """Left: per-layer norms of the deepest MLP; right: the first layer's norm against depth."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    deepest = max(depths)
    colors = dict(zip(ACTIVATIONS, ("#1f77b4", "#2ca02c", "#d62728")))
    styles = dict(zip(INITS, (":", "--", "-")))
    fig = Figure(figsize=(11, 5.5), layout="constrained")
    per_layer, first = fig.subplots(1, 2)
    for (activation, init), by_depth in norms.items():
        style = dict(color=colors[activation], linestyle=styles[init], marker=".",
                     label=f"{activation}, {init}")
        per_layer.plot(range(1, deepest + 1), np.maximum(by_depth[deepest], 1e-300), **style)
        first.plot(depths, [max(by_depth[d][0], 1e-300) for d in depths], **style)
    per_layer.set(yscale="log", xlabel="layer l", ylabel="||dL/dW[l]||",
                  title=f"gradient norm per layer, depth {deepest}, at initialization")
    first.set(yscale="log", xlabel="depth L", ylabel="||dL/dW[1]||",
              title="first layer's gradient norm against depth")
    for ax in (per_layer, first):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = per_layer.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8)
    write_figure(path, fig, dpi=100)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="experiments/gradient_flow.py",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--min-depth", type=positive_int, default=2, help="shallowest MLP (weight layers)")
    parser.add_argument("--max-depth", type=positive_int, default=20, help="deepest MLP (weight layers)")
    parser.add_argument("--width", type=positive_int, default=128, help="inputs and units per hidden layer")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="random examples per batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, inputs and labels")
    parser.add_argument("--grads", choices=("autodiff", "manual"), default="autodiff",
                        help="gradients from jax.grad or from nnjax.backprop.mlp_grads")
    parser.add_argument("--out", default=os.path.join("runs", "gradient_flow"),
                        help="folder for gradient_flow.png and results.json")
    args = parser.parse_args(argv)
    if not 2 <= args.min_depth <= args.max_depth:
        parser.error(f"need 2 <= --min-depth <= --max-depth, got {args.min_depth} and {args.max_depth}")

    depths = list(range(args.min_depth, args.max_depth + 1))
    norms = measure(depths, args.width, args.batch_size, args.seed, args.grads)
    print(f"||dL/dW[1]||, the first layer's gradient at initialization, against depth L (width "
          f"{args.width}, {args.grads} gradients); tiny: vanishing, huge: exploding:")
    print(first_layer_table(norms, depths))
    print(f"\n||dL/dW[l]|| per layer l of the depth-{args.max_depth} MLP:")
    print(layer_table(norms, args.max_depth))

    os.makedirs(args.out, exist_ok=True)
    plot_path = os.path.join(args.out, "gradient_flow.png")
    plot(norms, depths, plot_path)
    results = {"config": vars(args),
               "norms": {f"{a}|{i}": {str(d): n.tolist() for d, n in by_depth.items()}
                         for (a, i), by_depth in norms.items()}}
    write_json(os.path.join(args.out, "results.json"), results)
    print(f"\nplot saved to {plot_path}")
    return results


if __name__ == "__main__":
    main()
