"""Renders the chapter's diagrams (nnjax.viz) as PNG files, by default into docs/figures/.

    python scripts/figures.py                       # every figure
    python scripts/figures.py --only activations tensor_shapes
    python scripts/figures.py --out /tmp/figures --list

`conv_kernels` draws a real MNIST digit: run `python -m nnjax.data prepare` first.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without installing nnjax

from nnjax.viz import FIGURES  # noqa: E402

DEFAULT_OUT = os.path.join(ROOT, "docs", "figures")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Render nnjax's figures of the chapter's diagrams as PNG files.")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: docs/figures)")
    parser.add_argument("--only", nargs="+", choices=list(FIGURES), metavar="NAME",
                        help=f"render only these figures: {', '.join(FIGURES)}")
    parser.add_argument("--list", action="store_true", help="list the figure names and exit")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        print("\n".join(FIGURES))
        return 0
    failed = []
    for name in args.only or FIGURES:
        path = os.path.join(args.out, f"{name}.png")
        start = time.perf_counter()
        try:
            FIGURES[name](path=path)
        except FileNotFoundError as error:
            print(f"{name}: FAILED\n  {error}", file=sys.stderr)
            failed.append(name)
            continue
        print(f"{path}  ({time.perf_counter() - start:.1f} s)")
    if failed:
        print(f"{len(failed)} figure(s) not rendered: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
