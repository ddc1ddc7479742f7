"""XOR: a perceptron never classifies it; a 2-4-1 MLP does.

    python experiments/xor.py                 # prints both, saves runs/xor/xor_boundary.png
    python experiments/xor.py --grads manual  # the MLP trains on the hand-derived backprop

The chapter: "The perceptron can only learn linearly separable functions. The famous XOR
problem demonstrated that a single perceptron cannot compute XOR - motivating multilayer
networks." Rosenblatt's rule (`nnjax.layers.perceptron_fit`) makes mistakes in every epoch,
forever: no line puts (0, 1) and (1, 0) on one side and (0, 0) and (1, 1) on the other. A
hidden layer of 4 tanh units bends the boundary: the 2-4-1 MLP (`nnjax.network.mlp_logits`,
linear output, squared error against targets 0 and 1, output > 0.5 read as 1) fits all four
points.
"""
from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from _common import positive_float, positive_int
from nnjax.activations import get_activation
from nnjax.atomic import write_figure, write_json
from nnjax.backprop import mlp_grads_mse
from nnjax.layers import perceptron, perceptron_fit
from nnjax.losses import mse
from nnjax.network import mlp_init, mlp_logits

XOR_INPUTS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
XOR_TARGETS = np.array([0, 1, 1, 0], np.float32)


def fit_perceptron(epochs: int):
    """Rosenblatt's rule on XOR with labels in {-1, +1}; returns (params, mistakes per epoch)."""
    params, mistakes = perceptron_fit(XOR_INPUTS, 2 * XOR_TARGETS - 1, epochs=epochs)
    return params, np.asarray(mistakes)


def fit_mlp(key, hidden: int, steps: int, lr: float, grads: str, activation: str = "tanh"):
    """A 2-hidden-1 MLP trained by Adam on the mean squared error over the four points.

    Args:
      key: PRNG key of the initialization (Xavier, suited to tanh).
      hidden: hidden units.
      steps: full-batch gradient steps.
      lr: Adam's learning rate.
      grads: ``"autodiff"`` (jax.grad) or ``"manual"`` (`nnjax.backprop.mlp_grads_mse`).
      activation: hidden activation name.

    Returns:
      (params, losses (steps + 1,)): the loss before each step, then after the last.
    """
    sigma = get_activation(activation)[0]
    X, Y = jnp.asarray(XOR_INPUTS), jnp.asarray(XOR_TARGETS)[:, None]
    params = mlp_init(key, [2, hidden, 1], init="xavier")
    optimizer = optax.adam(lr)

    def loss(p):
        return jnp.mean(mse(jax.vmap(mlp_logits, in_axes=(None, 0, None))(p, X, sigma), Y))

    gradient = jax.grad(loss) if grads == "autodiff" else lambda p: mlp_grads_mse(p, X, Y, sigma)

    def step(carry, _):
        p, state = carry
        updates, state = optimizer.update(gradient(p), state, p)
        return (optax.apply_updates(p, updates), state), loss(p)

    def fit(carry):
        (p, _), before = jax.lax.scan(step, carry, None, length=steps)
        return p, jnp.append(before, loss(p))

    params, losses = jax.jit(fit)((params, optimizer.init(params)))
    return params, np.asarray(losses)


def mlp_outputs(params, points, activation: str = "tanh") -> np.ndarray:
    """The MLP's output z^[L] for each row of `points` (N, 2)."""
    sigma = get_activation(activation)[0]
    return np.asarray(jax.vmap(mlp_logits, in_axes=(None, 0, None))(params, jnp.asarray(points), sigma))[:, 0]


def plot_boundaries(perceptron_params, mlp_params, path: str) -> None:
    """Decision regions of the perceptron and of the MLP over [-0.5, 1.5]^2, XOR points on top."""
    from matplotlib.figure import Figure

    grid = np.linspace(-0.5, 1.5, 201, dtype=np.float32)
    gx, gy = np.meshgrid(grid, grid)
    points = np.stack([gx.ravel(), gy.ravel()], axis=1)
    perceptron_class = np.asarray(jax.vmap(perceptron, in_axes=(None, 0))(perceptron_params, points)) > 0
    mlp_class = mlp_outputs(mlp_params, points) > 0.5
    mlp_class_at_points = mlp_outputs(mlp_params, XOR_INPUTS) > 0.5
    fig = Figure(figsize=(8, 4), layout="constrained")
    for ax, regions, title in zip(fig.subplots(1, 2), (perceptron_class, mlp_class),
                                  ("perceptron: a line cannot separate XOR",
                                   f"2-{mlp_params[0]['W'].shape[0]}-1 MLP: "
                                   f"{'solved' if np.array_equal(mlp_class_at_points, XOR_TARGETS > 0.5) else 'not solved'}")):
        ax.contourf(gx, gy, regions.reshape(gx.shape), levels=[-0.5, 0.5, 1.5],
                    colors=["#cfe0f3", "#f6d3c4"])
        for target, marker, color in ((0, "o", "#1f5fa8"), (1, "s", "#c2451e")):
            chosen = XOR_TARGETS == target
            ax.scatter(*XOR_INPUTS[chosen].T, marker=marker, s=120, c=color, edgecolors="k",
                       label=f"XOR = {target}")
        ax.set(title=title, xlabel="$x_1$", ylabel="$x_2$", aspect="equal")
        ax.legend(loc="center")
    write_figure(path, fig, dpi=100)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="experiments/xor.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--epochs", type=positive_int, default=100,
                        help="perceptron epochs (passes over the four points)")
    parser.add_argument("--steps", type=positive_int, default=300, help="MLP gradient steps")
    parser.add_argument("--lr", type=positive_float, default=0.05, help="MLP learning rate (Adam)")
    parser.add_argument("--hidden", type=positive_int, default=4, help="MLP hidden units")
    parser.add_argument("--seed", type=int, default=0, help="seed of the MLP's initialization")
    parser.add_argument("--grads", choices=("autodiff", "manual"), default="autodiff",
                        help="MLP gradients from jax.grad or from nnjax.backprop.mlp_grads_mse")
    parser.add_argument("--out", default=os.path.join("runs", "xor"),
                        help="folder for xor_boundary.png and results.json")
    args = parser.parse_args(argv)

    perceptron_params, mistakes = fit_perceptron(args.epochs)
    perceptron_correct = int(np.sum(
        np.asarray(jax.vmap(perceptron, in_axes=(None, 0))(perceptron_params, XOR_INPUTS))
        == 2 * XOR_TARGETS - 1))
    print(f"perceptron, {args.epochs} epochs of Rosenblatt's rule: mistakes per epoch "
          f"{mistakes[:8].tolist()}{' ...' if args.epochs > 8 else ''}; fewest in any epoch: "
          f"{mistakes.min()} (never 0); final weights classify {perceptron_correct}/4")

    mlp_params, losses = fit_mlp(jax.random.key(args.seed), args.hidden, args.steps, args.lr, args.grads)
    outputs = mlp_outputs(mlp_params, XOR_INPUTS)
    mlp_correct = int(np.sum((outputs > 0.5) == (XOR_TARGETS > 0.5)))
    print(f"2-{args.hidden}-1 MLP ({args.grads} gradients), {args.steps} Adam steps: loss "
          f"{losses[0]:.4f} -> {losses[-1]:.2e}; classifies {mlp_correct}/4")
    for x, target, z in zip(XOR_INPUTS, XOR_TARGETS, outputs):
        print(f"  x = {x.astype(int).tolist()}  XOR = {int(target)}  MLP output {z:+.3f} -> {int(z > 0.5)}")

    os.makedirs(args.out, exist_ok=True)
    plot_path = os.path.join(args.out, "xor_boundary.png")
    plot_boundaries(perceptron_params, mlp_params, plot_path)
    results = {"perceptron_mistakes_per_epoch": mistakes.tolist(),
               "perceptron_correct": perceptron_correct, "mlp_outputs": outputs.tolist(),
               "mlp_correct": mlp_correct, "mlp_final_loss": float(losses[-1]),
               "config": vars(args)}
    write_json(os.path.join(args.out, "results.json"), results)
    print(f"decision boundaries saved to {plot_path}")
    return results


if __name__ == "__main__":
    main()
