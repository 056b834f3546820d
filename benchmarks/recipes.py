"""What each first-place recipe (issue #15) and training knob (issue 24) adds, on versus off, on
the hard benchmark.

``python -m benchmarks --only recipes`` runs ``pipelines/digits-hard.yaml`` (20 labelled digits
a class, occluded and noisy; 1,597 test images with answers) once per seed with every recipe off,
then once per seed and recipe with that recipe on and nothing else changed: the same models, the
same folds, the same stack candidates (``best``: the models of ``pipelines/digits-hard-best.yaml``,
the knobs that helped, together). Each run is the real stages (folds, train, predict,
stack, submit) called in this process, so the fold processes come from one fork server.

A recipe that only changes level two (``caruana``) reuses the "off" run's trained models and
runs the stack again. For every recipe the table gives, over the seeds, the mean +/- sd of the
stacked CV and of the local test score (``solution.csv``), the paired difference on - off, and
the seconds of train + predict + stack each way. A recipe whose key this checkout's config does
not know is reported as not run.

The seed sets the pipeline's ``seed`` and ``folds.seed``: each seed is another split and other
initial weights, so the spread over seeds is the noise a single run's difference must beat.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from benchmarks import REPO, machine

HARD_YAML = REPO / "pipelines" / "digits-hard.yaml"
#: The best combination of issue 24's knobs on this benchmark, as a pipeline (the ``best`` row).
BEST_YAML = REPO / "pipelines" / "digits-hard-best.yaml"
#: The stack every run scores, on and off alike: the cheap blends (logistic and LightGBM lost to
#: them on this benchmark and cost most of the stack's time).
BASE_CANDIDATES = ["best_single", "mean", "weighted_mean"]
SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class Recipe:
    """One row of the table.

    Attributes:
        name: the row's name.
        what: the setting switched on, as text.
        on: the pipeline dict with the recipe switched on (a changed copy).
        trains: False where only level two changes: the "off" run's models are stacked again.
    """

    name: str
    what: str
    on: Callable[[dict], dict]
    trains: bool = True


def every_model(**keys) -> Callable[[dict], dict]:
    """A recipe that sets ``keys`` on every model."""
    def on(cfg: dict) -> dict:
        cfg = copy.deepcopy(cfg)
        for model in cfg["models"]:
            model.update(copy.deepcopy(keys))
        return cfg
    return on


def stack_keys(**keys) -> Callable[[dict], dict]:
    """A recipe that sets ``keys`` in the ``stack`` section."""
    def on(cfg: dict) -> dict:
        cfg = copy.deepcopy(cfg)
        cfg["stack"] = {**cfg.get("stack", {}), **copy.deepcopy(keys)}
        return cfg
    return on


def students(key: str, **settings) -> Callable[[dict], dict]:
    """A second round: after the models, a student of the first one (same architecture and
    settings) trained with ``key`` (``pseudo_labels`` or ``distill``) from every first-round model.

    "Off" is the first round alone: a student without the recipe would be its teacher again (the
    same seed, the same weights), so it would add nothing to the stack.
    """
    def on(cfg: dict) -> dict:
        cfg = copy.deepcopy(cfg)
        teachers = [model["name"] for model in cfg["models"]]
        first = copy.deepcopy(cfg["models"][0])
        cfg["models"].append({**first, "name": f"{first['name']}_{key}", key: {"from": teachers, **settings}})
        return cfg
    return on


def bagged(count: int) -> Callable[[dict], dict]:
    """Seed bagging: every model trains each fold with ``count`` seeds (from the pipeline's)."""
    def on(cfg: dict) -> dict:
        return every_model(seeds=[cfg["seed"] + 1000 * i for i in range(count)])(cfg)
    return on


def progressive(cfg: dict) -> dict:
    """Progressive resizing: each model's first third of epochs at 8 px (the digits' own size)."""
    cfg = copy.deepcopy(cfg)
    for model in cfg["models"]:
        model["progressive"] = [{"size": 8, "epochs": max(1, model["epochs"] // 3)}]
    return cfg


def best_models(cfg: dict) -> dict:
    """The best combination: the models of ``pipelines/digits-hard-best.yaml`` (the same two CNNs
    with the knobs that helped switched on); seed, folds and stack as the "off" run's."""
    cfg = copy.deepcopy(cfg)
    cfg["models"] = yaml.safe_load(BEST_YAML.read_text())["models"]
    return cfg


RECIPES = (
    Recipe("caruana", "stack: Caruana's selection on accuracy (forced) vs the best of "
           + ", ".join(BASE_CANDIDATES), stack_keys(candidates=[*BASE_CANDIDATES, "caruana"], force="caruana"),
           trains=False),
    Recipe("mixup", "every model: `mixup: {alpha: 0.2, p: 0.5}`", every_model(mixup={"alpha": 0.2, "p": 0.5})),
    Recipe("cutmix", "every model: `cutmix: {alpha: 1.0, p: 0.5}`", every_model(cutmix={"alpha": 1.0, "p": 0.5})),
    # ~5 steps an epoch here: a decay of 0.999 would average mostly the initial weights.
    Recipe("ema", "every model: `ema: {decay: 0.9}`", every_model(ema={"decay": 0.9})),
    Recipe("progressive", "every model: first third of the epochs at 8 px", progressive),
    Recipe("pseudo_labels", "a student of cnn16, `pseudo_labels: {from: [cnn16, cnn12], threshold: 0.9}`",
           students("pseudo_labels", threshold=0.9)),
    Recipe("distill", "a student of cnn16, `distill: {from: [cnn16, cnn12], alpha: 0.5}`",
           students("distill", alpha=0.5)),
    Recipe("seeds", "every model: `seeds:` 2 seeds (2x the training)", bagged(2)),
    # Issue 24's knobs, each alone. digits-hard's models are small CNNs trained from scratch:
    # layer decay keeps the lower blocks' rate low, which protects pretrained features but here
    # only slows the blocks that have everything to learn (3 blocks: 0.8, 0.64, 0.51x the rate).
    Recipe("layer_decay", "every model: `layer_decay: 0.8`", every_model(layer_decay=0.8)),
    Recipe("onecycle", "every model: `schedule: {type: onecycle}` (pct_start 0.3)",
           every_model(schedule={"type": "onecycle"})),
    Recipe("focal", "every model: `loss: {type: focal, gamma: 2.0, alpha: 0.25}`",
           every_model(loss={"type": "focal", "gamma": 2.0, "alpha": 0.25})),
    Recipe("balanced", "every model: `sampler: {balance: classes}`", every_model(sampler={"balance": "classes"})),
    # The first epochs sit near chance from scratch (the YAML's note): SWA averages the second half.
    Recipe("swa", "every model: `average: {method: swa, from_epoch: 5}`",
           every_model(average={"method": "swa", "from_epoch": 5})),
    Recipe("top_k", "every model: `average: {method: top_k, k: 3}`", every_model(average={"method": "top_k", "k": 3})),
    Recipe("greedy_soup", "every model: `average: {method: greedy_soup}`",
           every_model(average={"method": "greedy_soup"})),
    Recipe("gem", "every model: `pooling: gem`", every_model(pooling="gem")),
    Recipe("best", "the models of `pipelines/digits-hard-best.yaml`", best_models),
)


@dataclass
class Outcome:
    """What one run gave: the stacked CV, the local test score and its seconds."""

    cv: float
    local: float
    seconds: float


@dataclass
class Row:
    """A recipe's runs, off and on, seed by seed."""

    recipe: Recipe
    off: list[Outcome] = field(default_factory=list)
    on: list[Outcome] = field(default_factory=list)
    note: str = ""


def base_config(seed: int) -> dict:
    """The hard benchmark's YAML with this seed (model initialisation and folds) and the base stack."""
    cfg = yaml.safe_load(HARD_YAML.read_text())
    cfg["seed"] = seed
    cfg["folds"] = {**cfg["folds"], "seed": seed}
    cfg["stack"] = {**cfg.get("stack", {}), "candidates": list(BASE_CANDIDATES)}
    return cfg


def run_pipeline(raw: dict, root: Path, data: Path, stages: tuple[str, ...]) -> Outcome:
    """Run ``stages`` of the pipeline ``raw`` under ``root`` on the shared ``data``; its outcome."""
    from foldstack.contracts import stack_output, submission_index
    from foldstack.core.paths import Paths
    from foldstack.pipeline import parse_pipeline
    from foldstack.stages import folds, predict, stack, submit, train

    cfg = parse_pipeline(raw)
    paths = Paths(cfg.name, root, mounted_data=data)
    steps = {"folds": folds.run, "train": train.run, "predict": predict.run, "stack": stack.run}
    seconds = 0.0
    for name in stages:
        started = time.perf_counter()
        steps[name](cfg, paths)
        if name != "folds":
            seconds += time.perf_counter() - started
    written = submit.run(cfg, paths)
    index = submission_index.read(paths.submissions / "index.csv")
    local = float(index.set_index("file").loc[written.name, "local_lb"])
    return Outcome(cv=float(stack_output.read_chosen(paths.stack)["cv_mean"]), local=local, seconds=seconds)


def known(raw: dict) -> str:
    """Empty if this checkout's config accepts ``raw``; else the config's one-line complaint."""
    from foldstack.core.config import ConfigError
    from foldstack.pipeline import parse_pipeline

    try:
        parse_pipeline(raw)
    except ConfigError as error:
        return str(error)
    return ""


def off_outcome(raw: dict, root: Path, data: Path, seed: int) -> Outcome:
    """The "off" run of ``seed``: measured once, kept in ``root/outcome.json`` for later runs of
    other recipes (its seconds are those of the run that trained it, not of a rerun that skips)."""
    kept = root / "outcome.json"
    if kept.is_file():
        return Outcome(**json.loads(kept.read_text()))
    print(f"seed {seed}: every recipe off", flush=True)
    outcome = run_pipeline(raw, root, data, ("folds", "train", "predict", "stack"))
    kept.write_text(json.dumps(dataclasses.asdict(outcome)))
    return outcome


def measure(recipes: list[Recipe], seeds: tuple[int, ...], folder: Path,
            done: Callable[[list[Row]], None] = lambda rows: None) -> list[Row]:
    """Every recipe on and off over ``seeds``, one recipe after the other (``done`` is called
    after each, with the rows so far); a seed's "off" run is trained once and shared."""
    from foldstack.core.paths import Paths
    from foldstack.pipeline import parse_pipeline
    from foldstack.stages import download

    shared = Paths.for_pipeline(parse_pipeline(base_config(seeds[0])).name, folder / "shared")
    download.run(parse_pipeline(base_config(seeds[0])), shared)
    offs: dict[int, Outcome] = {}
    rows = []
    for recipe in recipes:
        row = Row(recipe)
        rows.append(row)
        row.note = known(recipe.on(base_config(seeds[0])))
        for seed in seeds if not row.note else ():
            off_raw, off_root = base_config(seed), folder / f"seed{seed}" / "off"
            if seed not in offs:
                offs[seed] = off_outcome(off_raw, off_root, shared.data, seed)
            print(f"seed {seed}: {recipe.name} on", flush=True)
            if recipe.trains:
                row.off.append(offs[seed])
                row.on.append(run_pipeline(recipe.on(off_raw), folder / f"seed{seed}" / recipe.name, shared.data,
                                           ("folds", "train", "predict", "stack")))
            else:
                # Level two alone: both sides pay the same training; compare the stacks' seconds.
                row.on.append(run_pipeline(recipe.on(off_raw), off_root, shared.data, ("stack",)))
                stack_off = run_pipeline(off_raw, off_root, shared.data, ("stack",))
                row.off.append(Outcome(offs[seed].cv, offs[seed].local, stack_off.seconds))
        done(rows)
    return rows


def _spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {sd:.4f}"


def verdict(off: list[float], on: list[float]) -> str:
    """``helps`` where the paired gain on the local test score exceeds its own sd over seeds."""
    gains = [b - a for a, b in zip(off, on)]
    mean = statistics.fmean(gains)
    sd = statistics.stdev(gains) if len(gains) > 1 else 0.0
    if mean > sd:
        return "helps"
    if mean < -sd:
        return "hurts"
    return "does not help (within noise)"


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table for RESULTS.md."""
    lines = ["| recipe | what is on | CV off | CV on | local test off | local test on | "
             "paired gain, local test | seconds off → on | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if not row.on:
            lines.append(f"| {row.recipe.name} | {row.recipe.what} | not run: {row.note} | | | | | | |")
            continue
        off_local, on_local = [o.local for o in row.off], [o.local for o in row.on]
        gains = [b - a for a, b in zip(off_local, on_local)]
        lines.append(
            f"| {row.recipe.name} | {row.recipe.what} | {_spread([o.cv for o in row.off])} | "
            f"{_spread([o.cv for o in row.on])} | {_spread(off_local)} | {_spread(on_local)} | "
            f"{_spread(gains)} | {statistics.fmean(o.seconds for o in row.off):.0f} → "
            f"{statistics.fmean(o.seconds for o in row.on):.0f} | {verdict(off_local, on_local)} |")
    return "\n".join(lines)


def run(folder: Path, names: list[str] | None = None, seeds: tuple[int, ...] = SEEDS) -> str:
    """Measure the recipes called ``names`` (default: all) and return the Markdown table."""
    recipes = [r for r in RECIPES if names is None or r.name in names]
    started = time.perf_counter()

    def heading() -> str:
        minutes = (time.perf_counter() - started) / 60
        return f"{machine()}; digits-hard, seeds {', '.join(map(str, seeds))}; {minutes:.1f} min so far"

    # The table so far after each recipe: a run cut short still leaves its finished rows.
    rows = measure(recipes, seeds, folder, done=lambda rows: print(f"\n{heading()}\n\n{table(rows)}\n", flush=True))
    return f"{heading()}\n\n{table(rows)}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recipes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", choices=[r.name for r in RECIPES], help="only these rows")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--root", type=Path, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.root:
        print(run(args.root, args.recipes, tuple(args.seeds)))
        return
    with tempfile.TemporaryDirectory(prefix="foldstack-recipes-") as tmp:
        print(run(Path(tmp), args.recipes, tuple(args.seeds)))


if __name__ == "__main__":
    main()
