"""Every transfer regime on the default pipeline: seconds per fold and CV (OOF) accuracy.

The digits pipeline (``pipelines/digits.yaml``: its data, folds and augmentation) with four
models, one per regime, trained by the real ``foldstack`` stages in a fresh root:

* ``scratch``: the default's small CNN (``cnn``);
* ``features``: EfficientNet-Lite0 with ImageNet weights (``lite0``, the default's until issue #15);
* ``partial``: the same Lite0 cut at ``block6a_expand_activation``, dense layers on the frozen cut;
* ``finetune``: the same Lite0, head first, then unfrozen at a lower rate (last: the slowest).

``python -m benchmarks.regime_table --root DIR`` prints a Markdown table; ``--size`` sets the
Lite0 models' image size (the default's 64 px; a fine-tune at 64 px is slow on a CPU).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks import digits_pipeline, machine

LITE0 = {"backbone": "efficientnet_lite0", "weights": "imagenet", "batch_size": 64, "lr": 0.003, "dropout": 0.3}


def pipeline(size: int, finetune_epochs: int) -> dict:
    """The default pipeline with one model per regime."""
    cfg = digits_pipeline()
    cnn, lite0 = (next(m for m in cfg["models"] if m["name"] == name) for name in ("cnn", "lite0"))
    lite0["image_size"] = size
    cfg["models"] = [
        cnn,
        lite0,
        {**LITE0, "name": "lite0_partial", "image_size": size, "regime": "partial", "epochs": 20,
         "cut_layer": "block6a_expand_activation", "dense_units": [256], "patience": 5},
        {**LITE0, "name": "lite0_finetune", "image_size": size, "regime": "finetune", "epochs": finetune_epochs,
         "head_epochs": 2, "finetune_lr": 3e-4, "patience": 4},
    ]
    return cfg


def stage(name: str, yaml_path: Path, root: Path) -> float:
    command = [sys.executable, "-m", "foldstack.cli", name, "-p", str(yaml_path), "--root", str(root)]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.regime_table", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="a fresh folder for data and artifacts")
    parser.add_argument("--size", type=int, default=64, help="image size of the Lite0 models")
    parser.add_argument("--finetune-epochs", type=int, default=10)
    args = parser.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    cfg = pipeline(args.size, args.finetune_epochs)
    yaml_path = args.root / "digits-regimes.yaml"
    yaml_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    for name in ("download", "folds", "train"):
        print(f"foldstack {name}: {stage(name, yaml_path, args.root):.1f} s", flush=True)
    print(f"\n{machine()}; digits, 5 folds; Lite0 models at {args.size} px\n")
    print("| regime | model | seconds per fold (mean; each fold) | CV accuracy | epochs run |")
    print("|---|---|---|---|---|")
    for model in cfg["models"]:
        manifest = json.loads((args.root / "artifacts" / cfg["name"] / "models" / model["name"] /
                               "manifest.json").read_text())
        # The features regime runs the backbone once for all folds: a k-th of that goes to each fold.
        shared = (manifest.get("features_seconds") or 0.0) / len(manifest["folds"])
        seconds = [f["seconds"] + shared for f in manifest["folds"]]
        print(f"| {model['regime']} | {model['name']} | {sum(seconds) / len(seconds):.1f} "
              f"({', '.join(f'{s:.0f}' for s in seconds)}) | {manifest['cv_score']:.4f} | "
              f"{', '.join(str(f['epochs']) for f in manifest['folds'])} |", flush=True)


if __name__ == "__main__":
    main()
