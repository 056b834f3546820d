"""Table columns in the stack (``stack.features``, issue 25): the stackers with and without
table columns, where the columns carry signal and where they carry none.

The data ship with scikit-learn (``load_digits``: 1,797 8x8 digits, ten classes). Level one is
two quick pixel models that see the left half of each digit only (logistic regression and
Gaussian naive Bayes on its 32 pixels), their OOF probabilities made on the same 5 stratified
folds level two cross-validates on, their test probabilities by a fit on every training digit
(a held-out 20 %). The table beside them holds, per digit,

* ``signal``: the ink of each of the right half's four pixel columns (what level one never saw:
  a real measurement of the same image, as age or body site are of a patient);
* ``noise``: four columns drawn at random, independent of everything.

Each stacker (``logistic``, ``lightgbm``) is cross-validated by foldstack's own nested CV
(``selection.cross_validate``) without columns, with ``signal`` and with ``noise``, then fitted
on every OOF row and scored on the held-out test digits. Seeds change the split, the folds,
the noise and LightGBM's seed. Metric: log loss (lower is better).

Run: ``PYTHONPATH=src:. python -m benchmarks.table_columns [--seeds 0 1 2]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

STACKERS = ("logistic", "lightgbm")
CASES = ("none", "signal", "noise")


def level_one(seed: int):
    """``(oof, y, fold, test, y_test, tables)``: the two pixel models' OOF and test probabilities
    ``(n, 2, 10)``, the folds, and the train and test tables of each case."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, train_test_split
    from sklearn.naive_bayes import GaussianNB

    digits = load_digits()
    images, y = digits.images, digits.target
    train, test = train_test_split(np.arange(len(y)), test_size=0.2, random_state=seed, stratify=y)
    left = images[:, :, :4].reshape(len(y), -1)
    models = [LogisticRegression(C=0.05, max_iter=2000), GaussianNB()]
    fold = np.zeros(len(train), dtype=int)
    for k, (_, held) in enumerate(StratifiedKFold(5, shuffle=True, random_state=seed).split(train, y[train])):
        fold[held] = k
    oof = np.zeros((len(train), len(models), 10))
    for k in range(5):
        for m, model in enumerate(models):
            fitted = model.fit(left[train][fold != k], y[train][fold != k])
            oof[fold == k, m] = fitted.predict_proba(left[train][fold == k])
    test_proba = np.stack([model.fit(left[train], y[train]).predict_proba(left[test]) for model in models], axis=1)
    rng = np.random.default_rng(seed)
    ink = images[:, :, 4:].sum(axis=1)  # each right-half column's ink
    noise = rng.normal(size=(len(y), 4))
    tables = {case: {split: pd.DataFrame(values[rows], columns=[f"{case}{c}" for c in range(4)])
                     for split, rows in (("train", train), ("test", test))}
              for case, values in (("signal", ink), ("noise", noise))}
    return oof, y[train], fold, test_proba, y[test], tables


def run(seeds: list[int]) -> pd.DataFrame:
    from foldstack.core import metrics
    from foldstack.level2 import candidates
    from foldstack.level2.selection import cross_validate
    from foldstack.pipeline import parse_pipeline

    metric = metrics.get("log_loss")
    rows = []
    for seed in seeds:
        oof, y, fold, test, y_test, tables = level_one(seed)
        for case in CASES:
            features = None if case == "none" else {"columns": [f"{case}{c}" for c in range(4)]}
            cfg = parse_pipeline({
                "name": "digits-table", "task": "multiclass", "metric": "log_loss", "seed": seed,
                "data": {"source": {"type": "embedded", "dataset": "digits"}},
                "models": [{"name": "logreg_left", "backbone": "small_cnn"}, {"name": "nb_left", "backbone": "small_cnn"}],
                "stack": {"features": features}})
            for stacker in STACKERS:
                name = stacker if features is None else f"{stacker}+features"
                train_table = None if features is None else tables[case]["train"]
                test_table = None if features is None else tables[case]["test"]
                started = time.perf_counter()
                result = cross_validate(candidates.build(name, cfg), oof, y, fold, metric, table=train_table)
                fitted = candidates.build(name, cfg).fit(oof, y, train_table)
                proba = fitted.predict_proba(test, test_table)
                rows.append({"seed": seed, "stacker": stacker, "columns": case,
                             "cv": result.fold_scores.mean(), "test": metric(y_test, proba),
                             "seconds": time.perf_counter() - started})
                print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def with_the_stack(results: pd.DataFrame) -> pd.DataFrame:
    """``results`` and, per seed and case, the stack stage's choice: the best CV among the
    stackers without columns (case ``none``) and, for a case with columns, also with them (the
    leaderboard scores both), with its test score."""
    rows = []
    for seed, group in results.groupby("seed"):
        plain = group[group["columns"] == "none"]
        for case in CASES:
            board = plain if case == "none" else pd.concat([plain, group[group["columns"] == case]])
            best = board.loc[board["cv"].idxmin()]
            rows.append({"seed": seed, "stacker": "stack (best CV)", "columns": case, "cv": best["cv"],
                         "test": best["test"], "seconds": board["seconds"].sum(),
                         "chosen": f"{best['stacker']}{'' if best['columns'] == 'none' else '+features'}"})
    return pd.concat([results, pd.DataFrame(rows)], ignore_index=True)


def summary(results: pd.DataFrame) -> str:
    """Mean ± sd over seeds per (stacker, columns), and the paired change against no columns."""
    results = with_the_stack(results)
    lines = ["| stacker | columns | CV log loss | test log loss | paired change, test (vs none) |",
             "|---|---|---|---|---|"]
    for (stacker, case), group in results.groupby(["stacker", "columns"], sort=False):
        base = results[(results["stacker"] == stacker) & (results["columns"] == "none")].set_index("seed")["test"]
        change = group.set_index("seed")["test"] - base
        lines.append(f"| {stacker} | {case} | {group['cv'].mean():.4f} ± {group['cv'].std():.4f} | "
                     f"{group['test'].mean():.4f} ± {group['test'].std():.4f} | "
                     f"{change.mean():+.4f} ± {change.std():.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.table_columns", description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    results = run(args.seeds)
    print(summary(results))
    print(with_the_stack(results).to_string(index=False))


if __name__ == "__main__":
    main()
