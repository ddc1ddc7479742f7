"""A run's files, each written atomically (a crash leaves the old file or the new one, never a
part): the checkpoint, the metrics, the results and the curves."""

from __future__ import annotations

import json
import os
import zipfile

import jax
import numpy as np

from nnjax.atomic import remove_temporary_files, write_atomically, write_figure, write_text

__all__ = [
    "CHECKPOINT_FILE", "METRICS_FILE", "RESULTS_FILE", "CURVES_FILE", "save_checkpoint",
    "load_checkpoint", "plot_curves",
]


CHECKPOINT_FILE = "checkpoint.npz"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
CURVES_FILE = "curves.png"


def _remove_stale_temporary_files(out_dir: str) -> None:
    """Deletes the temporary files a killed run left in `out_dir` (never a finished file)."""
    remove_temporary_files(out_dir, (CHECKPOINT_FILE, METRICS_FILE, RESULTS_FILE, CURVES_FILE))


def save_checkpoint(path: str, tree, meta: dict) -> None:
    """Writes a pytree of arrays and a JSON-able dict to `path` (.npz), atomically.

    Args:
      path: the checkpoint file.
      tree: any pytree of arrays (params, optimizer state, ...).
      meta: JSON-serializable information (epoch, history, config).
    """
    leaves, treedef = jax.tree_util.tree_flatten(jax.device_get(tree))
    header = json.dumps({"meta": meta, "treedef": str(treedef), "leaves": len(leaves)})
    arrays = {f"leaf_{i:05d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    arrays["header"] = np.frombuffer(header.encode(), dtype=np.uint8)
    write_atomically(path, lambda f: np.savez(f, **arrays), durable=True)


def load_checkpoint(path: str, template):
    """Reads a checkpoint of `save_checkpoint` into the structure of `template`.

    Args:
      path: the checkpoint file.
      template: a pytree with the checkpoint's structure, shapes and dtypes (e.g. a freshly
        initialized run with the same config).

    Returns:
      ``(tree, meta)``.

    Raises:
      ValueError: the file is not such a checkpoint, or its structure, shapes or dtypes differ
        from `template`'s (naming the first difference).
    """
    template_leaves, treedef = jax.tree_util.tree_flatten(template)
    if os.path.isfile(path) and not zipfile.is_zipfile(path):
        raise ValueError(f"load_checkpoint: {path} is not an nnjax checkpoint: not an .npz (zip) "
                         f"archive ({os.path.getsize(path)} bytes); it was damaged or is another "
                         f"kind of file")
    try:
        with np.load(path, allow_pickle=False) as f:
            header = json.loads(bytes(f["header"]).decode())
            structure, meta = header["treedef"], header["meta"]
            leaves = [f[f"leaf_{i:05d}"] for i in range(header["leaves"])]
    except (OSError, EOFError, KeyError, TypeError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"load_checkpoint: {path} is not a readable nnjax checkpoint "
                         f"({type(e).__name__}: {e}); it was damaged or is another kind of file") from e
    if structure != str(treedef) or len(leaves) != len(template_leaves):
        raise ValueError(f"load_checkpoint: {path} holds a different structure than this run "
                         f"expects:\n  checkpoint: {structure}\n  expected:   {treedef}")
    for i, (leaf, want) in enumerate(zip(leaves, template_leaves)):
        if leaf.shape != np.shape(want) or leaf.dtype != np.asarray(want).dtype:
            raise ValueError(f"load_checkpoint: {path} leaf {i} has shape {leaf.shape} dtype "
                             f"{leaf.dtype}, expected {np.shape(want)} {np.asarray(want).dtype}")
    return jax.tree_util.tree_unflatten(treedef, leaves), meta


def plot_curves(history: list[dict], path: str, title: str = "") -> None:
    """Saves loss and accuracy per epoch (training and evaluation) as a PNG.

    Args:
      history: the per-epoch records of `train` (keys ``train_loss``, ``train_accuracy`` and
        ``<eval>_loss``, ``<eval>_accuracy``).
      path: the PNG file.
      title: the figure's title.
    """
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    eval_name = "val" if "val_loss" in history[0] else "test"
    fig = Figure(figsize=(9, 3.5))
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.14, top=0.88, wspace=0.3)
    for ax, metric, scale in zip(fig.subplots(1, 2), ("loss", "accuracy"), ("log", "linear")):
        for split in ("train", eval_name):
            ax.plot(epochs, [r[f"{split}_{metric}"] for r in history], marker="o", label=split)
        ax.set(xlabel="epoch", ylabel=metric, yscale=scale)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    write_figure(path, fig, dpi=100)


def _write_json_lines(path: str, records: list[dict]) -> None:
    """One JSON object per line (``metrics.jsonl``), written atomically."""
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))
