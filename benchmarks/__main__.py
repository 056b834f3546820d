"""``python -m benchmarks`` (``make bench``): run the benchmarks, print one table of ratios.

The default fits ``make bench``'s 15 minutes on two shared cores; ``--stack-rows 100000`` (the
full stacking size), ``--e2e`` (the whole default pipeline) and ``--only recipes`` (issue #15's
recipes on versus off on the hard benchmark, ``benchmarks/recipes.py``) are separate, longer runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter hides the table

from benchmarks import machine, table  # noqa: E402

BENCHES = ("loader", "augment", "training", "regimes", "stacking", "executors", "scale")
#: ``make bench``'s size of the scale benchmark (``python -m benchmarks.scale --n 20000``: the issue's).
SCALE_N = 40


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--only", nargs="+", choices=[*BENCHES, "e2e", "recipes"], help="run these benchmarks only")
    parser.add_argument("--stack-rows", type=int, default=3000,
                        help="rows of the synthetic OOF (100000: the full size, about 16 min on 2 cores)")
    parser.add_argument("--e2e", action="store_true", help="also time every stage of `make all` (minutes)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    chosen = args.only or [*BENCHES, *(["e2e"] if args.e2e else [])]
    rows, tables = [], []
    with tempfile.TemporaryDirectory(prefix="foldstack-bench-") as tmp:
        folder = Path(tmp)
        for name in chosen:
            print(f"running {name}...", flush=True)
            if name == "recipes":  # a table of its own: recipe on versus off over seeds
                from benchmarks import recipes
                tables.append(recipes.run(folder / "recipes"))
            else:
                rows.extend(_run(name, folder, args))
    if rows:
        print(f"\n{machine()}\n")
        print(table(rows))
    for text in tables:
        print(f"\n{text}")


def _run(name: str, folder: Path, args: argparse.Namespace):
    # Imported one at a time: the stacking benchmark alone needs no Keras.
    if name == "loader":
        from benchmarks import loader
        return loader.run(folder)
    if name == "augment":
        from benchmarks import augment
        return augment.run(folder)
    if name == "training":
        from benchmarks import training
        return training.run(folder)
    if name == "regimes":
        from benchmarks import regimes
        return regimes.run(folder)
    if name == "stacking":
        from benchmarks import stacking
        return stacking.run(args.stack_rows)
    if name == "executors":
        from benchmarks import executors
        return executors.run(folder)
    if name == "scale":
        from benchmarks import scale
        rows, extrapolation = scale.run(folder / "scale", SCALE_N)
        print(extrapolation)
        return rows
    from benchmarks import e2e
    return e2e.run(folder)


if __name__ == "__main__":
    main()
