"""`foldstack <stage>`: one subcommand per stage. The work lives in the stage modules
(:mod:`foldstack.stages`); this module parses the command line, loads the pipeline and calls them.

Bad input ends with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from foldstack import backbones
from foldstack.contracts import bundle_file
from foldstack.core.errors import DiskFullError, FoldstackError, is_disk_full
from foldstack.core.logs import setup_logging
from foldstack.core.paths import Paths, scratch_root
from foldstack.data import kaggle
from foldstack.pipeline import load_pipeline
from foldstack.stages import bundle, check, download, folds, init, kernel, predict, report, stack, submit, train


def _pipeline_path(name: str) -> Path:
    """``digits`` means ``pipelines/digits.yaml``; a path to a YAML file is taken as it is."""
    path = Path(name)
    return path if path.suffix in (".yaml", ".yml") else Path("pipelines") / f"{name}.yaml"


def _load(args: argparse.Namespace):
    cfg = load_pipeline(_pipeline_path(args.pipeline))
    return cfg, Paths.for_config(cfg, args.root)


def cmd_download(args: argparse.Namespace) -> None:
    cfg, paths = _load(args)
    print(f"data ready: {download.run(cfg, paths, force=args.force)}")


def cmd_folds(args: argparse.Namespace) -> None:
    cfg, paths = _load(args)
    frame = folds.run(cfg, paths)
    print(f"folds: {len(frame)} images in {cfg.folds.k} folds -> {paths.folds}")


def cmd_train(args: argparse.Namespace) -> None:
    cfg, paths = _load(args)
    train.run(cfg, paths, only=args.model or None, workers=args.workers)


def cmd_predict(args: argparse.Namespace) -> None:
    cfg, paths = _load(args)
    if args.images is None:
        if args.out is not None or args.skip_unreadable or args.explain or args.table is not None:
            raise FoldstackError("predict: --out, --skip-unreadable, --explain and --table go with --images DIR")
        predict.run(cfg, paths, workers=args.workers)
        return
    predict.images(cfg, paths, Path(args.images), Path(args.out or "predictions.csv"),
                   skip_unreadable=args.skip_unreadable, workers=args.workers, explain=args.explain,
                   table=None if args.table is None else Path(args.table))


def cmd_stack(args: argparse.Namespace) -> None:
    cfg, paths = _load(args)
    stack.run(cfg, paths)


def cmd_submit(args: argparse.Namespace) -> None:
    cfg, paths = _load(args)
    upload = None
    if args.upload:
        if not args.message:
            raise FoldstackError("submit --upload needs a message: -m 'what this submission is'")

        def upload(path: Path) -> float | None:
            submitted = kaggle.submit(cfg, path, args.message)
            print(submitted.status)
            return submitted.public_score

    submit.run(cfg, paths, upload=upload)


def cmd_report(args: argparse.Namespace) -> None:
    cfg, paths = _load(args)
    report.run(cfg, paths)


def cmd_bundle(args: argparse.Namespace) -> None:
    cfg, paths = _load(args)
    if args.upload and not args.message:
        raise FoldstackError("bundle --upload needs version notes: -m 'what changed'")
    folder = bundle.run(cfg, paths, _pipeline_path(args.pipeline), owner=args.owner, wheels=tuple(args.wheel or ()),
                        find_links=tuple(Path(link) for link in args.find_links or ()),
                        pythons=tuple(args.python or (bundle.KAGGLE_PYTHON,)),
                        requirements=Path(args.requirements) if args.requirements else None,
                        leave_out=(*bundle.LEAVE_OUT, *(args.leave_out or ())), accelerator=args.accelerator)
    if args.upload:
        print(kaggle.publish_dataset(folder, args.message))


def cmd_kernel(args: argparse.Namespace) -> None:
    bundle_dir = Path(args.bundle)
    bundle_file.read(bundle_dir)  # a folder that is no bundle, or lacks a file, is named before anything else
    kernel.restore_weights(bundle_dir)  # a hub backbone's preset is read when the pipeline is validated
    cfg = load_pipeline(bundle_dir / bundle_file.PIPELINE)
    # Everything but the submission goes to scratch: /kaggle/working keeps 20 GB.
    kernel.run(cfg, Paths.for_config(cfg, args.root or scratch_root()), bundle_dir, time_limit=args.time_limit)


def cmd_kernel_push(args: argparse.Namespace) -> None:
    cfg, paths = _load(args)
    if not args.submit:
        if args.message:
            raise FoldstackError("kernel-push: -m goes with --submit")
        print(kaggle.push_kernel(paths.kernel).line())
        return
    if not args.message:
        raise FoldstackError("kernel-push --submit needs a message: -m 'what this submission is'")

    def upload(path: Path) -> float | None:
        # The kernel writes and submits its own output; the local file's row in index.csv gets the score.
        submitted = kaggle.submit_kernel(paths.kernel, args.message)
        print(submitted.status)
        return submitted.public_score

    submit.run(cfg, paths, upload=upload)


def cmd_check(args: argparse.Namespace) -> None:
    _check(*_load(args))


def _check(cfg, paths: Paths) -> None:
    report = check.run(cfg, paths)
    print(report.render())
    if report.problems:
        raise FoldstackError(f"{len(report.problems)} problem(s) found in {paths.data}; "
                             "fix them before training (listed above)")


def cmd_init(args: argparse.Namespace) -> None:
    if bool(args.data) == bool(args.competition):
        raise FoldstackError("init: name the competition's files with --data DIR or --competition SLUG (one of them)")
    source = ({"type": "local", "path": str(Path(args.data).resolve())} if args.data
              else {"type": "kaggle_competition", "competition": args.competition})
    name = Path(args.pipeline).stem
    done = init.run(name, Paths.for_pipeline(name, args.root), _pipeline_path(args.pipeline), source, force=args.force)
    print(f"wrote {done.path}")
    for line in done.notes:
        print(f"  {line}")
    if done.checks:
        print(f"check these {len(done.checks)} key(s) (marked '# check:'):")
        print("\n".join(f"  {line}" for line in done.checks))
    if done.task == "regression":
        raise FoldstackError(f"{done.path}: task regression; foldstack cannot train regression yet")
    _check(*_load(args))


def cmd_backbones(args: argparse.Namespace) -> None:
    rows = backbones.describe()
    print(f"{'name':24} {'family':20} {'parameters':>12} {'default size':>12}")
    for row in rows:
        print(f"{row['name']:24} {row['family']:20} {row['parameters']:>12,} {row['default_size']:>12}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="foldstack", description=__doc__.splitlines()[0])
    # -v works before or after the subcommand (`foldstack -v train`, `foldstack train -v`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log diagnostics (debug level)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics (debug level)")
    sub = parser.add_subparsers(dest="command", required=True)

    def stage(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, parents=[common])
        p.add_argument("-p", "--pipeline", default="digits", help="pipeline name or YAML path (default: digits)")
        p.add_argument("--root", default=None, help="project folder holding data/, artifacts/, submissions/")
        p.set_defaults(func=func)
        return p

    stage("download", cmd_download, "fetch the competition's files into data/<pipeline>/").add_argument(
        "--force", action="store_true", help="fetch again even if already downloaded")
    stage("folds", cmd_folds, "write artifacts/<pipeline>/folds.csv")
    train = stage("train", cmd_train, "fine-tune every model on every fold; write OOF predictions")
    train.add_argument("--model", action="append", help="train only this model (repeatable)")
    train.add_argument("--workers", type=int, default=None, help="input-pipeline threads")
    predict_parser = stage("predict", cmd_predict, "predict the test set with every trained fold (TTA); "
                           "--images DIR predicts a folder of images with the models and the stack")
    predict_parser.add_argument("--images", metavar="DIR", help="a folder of images (sub-folders too) to predict")
    predict_parser.add_argument("--out", metavar="FILE", help="--images: the CSV to write (default: predictions.csv)")
    predict_parser.add_argument("--explain", action="store_true",
                                help="--images: write each image's Grad-CAM heatmap into <out>-explain/")
    predict_parser.add_argument("--table", metavar="CSV",
                                help="--images: the images' table columns (a row per image by the id column), "
                                     "for models with meta")
    predict_parser.add_argument("--skip-unreadable", action="store_true",
                                help="--images: predict the readable images, warn about the others")
    predict_parser.add_argument("--workers", type=int, default=None, help="input-pipeline threads")
    stage("check", cmd_check, "validate the config and every train and test file before training")
    init_cmd = stage("init", cmd_init, "write pipelines/<pipeline>.yaml from a competition's own files, then check it")
    init_cmd.add_argument("--data", metavar="DIR", help="a folder holding the competition's files as shipped")
    init_cmd.add_argument("--competition", metavar="SLUG", help="a Kaggle competition, downloaded by the client")
    init_cmd.add_argument("--force", action="store_true", help="overwrite the pipeline if it exists")
    stage("stack", cmd_stack, "score blends and the LightGBM stacker by CV; save the best; apply it to "
          "the test predictions")
    submit = stage("submit", cmd_submit, "write a validated submission; --upload sends it to Kaggle")
    submit.add_argument("--upload", action="store_true", help="submit the file through the Kaggle API")
    submit.add_argument("-m", "--message", help="the submission's description on Kaggle")
    stage("report", cmd_report, "write artifacts/<pipeline>/report.html: errors, Grad-CAM, curves, CV vs LB")


    bundle_cmd = stage("bundle", cmd_bundle, "one folder to upload as a Kaggle dataset: wheels, models, weights; "
                                            "and the inference kernel beside it")
    bundle_cmd.add_argument("--upload", action="store_true", help="create the dataset, or a new version of it")
    bundle_cmd.add_argument("-m", "--message", help="the new version's notes on Kaggle")
    bundle_cmd.add_argument("--owner", help="Kaggle user owning the dataset and kernel (default: the signed-in one)")
    bundle_cmd.add_argument("--wheel", action="append", metavar="REQUIREMENT",
                            help="ship this requirement too, though left out by default "
                                 f"({', '.join(bundle.LEAVE_OUT)}); repeatable")
    bundle_cmd.add_argument("--leave-out", action="append", metavar="REQUIREMENT",
                            help="do not ship this requirement (the kernel image has it at a version that works); "
                                 "repeatable")
    bundle_cmd.add_argument("--requirements", metavar="FILE",
                            help="the pins to ship (default: the checkout's requirements.txt)")
    bundle_cmd.add_argument("--find-links", action="append", metavar="DIR",
                            help="take the wheels from DIR, not the package index")
    bundle_cmd.add_argument("--python", action="append", metavar="X.Y",
                            help="a Python the kernel may run, wheels shipped for each; repeatable "
                                 f"(default: {bundle.KAGGLE_PYTHON}, the Kaggle image's)")
    bundle_cmd.add_argument("--accelerator", metavar="SHAPE",
                            help="the kernel's machine_shape, e.g. NvidiaTeslaT4, NvidiaL4, TpuV5E8 "
                                 "(default: Kaggle's default GPU)")
    kernel_cmd = sub.add_parser("kernel", parents=[common],
                                help="in a Kaggle kernel: predict, stack and submit with an attached bundle")
    kernel_cmd.add_argument("--bundle", required=True, help="the bundle folder (under /kaggle/input)")
    kernel_cmd.add_argument("--root", default=None, help="where the artifacts and caches go (default: scratch, "
                                                         "/kaggle/temp or /tmp/foldstack; FOLDSTACK_SCRATCH moves it)")
    kernel_cmd.add_argument("--time-limit", type=float, default=kernel.TIME_LIMIT_HOURS, metavar="HOURS",
                            help="the competition's run-time limit: warn when the projection passes it (default: 9)")
    kernel_cmd.set_defaults(func=cmd_kernel)
    push_cmd = stage("kernel-push", cmd_kernel_push, "push kernel/<pipeline>/ to Kaggle, which runs it on the "
                     "bundle's newest version; --submit submits its output to the competition")
    push_cmd.add_argument("--submit", action="store_true",
                          help="wait for the run, submit its output (a code competition) and record the public "
                               "score in index.csv")
    push_cmd.add_argument("-m", "--message", help="--submit: the submission's description on Kaggle")
    backbones = sub.add_parser("backbones", help="list the registered backbones", parents=[common])
    backbones.set_defaults(func=cmd_backbones)
    return parser


def _fail(command: str, error: FoldstackError) -> int:
    """Print ``error`` as one line on stderr; return its exit status."""
    print(f"foldstack {command}: error: {error}", file=sys.stderr)
    return error.exit_code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        # TensorFlow's C++ info and warnings; the lines it writes before reading this are
        # filtered out of the fold processes' stderr (runtime.native_logs).
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        args.func(args)
    except FoldstackError as error:
        return _fail(args.command, error)
    except OSError as error:
        # A full disk can strike any write (Keras checkpoints, logs), not only atomic ones.
        if not is_disk_full(error):
            raise
        return _fail(args.command, DiskFullError(error.filename))
    except KeyboardInterrupt:
        print(f"foldstack {args.command}: interrupted; finished work is kept, run it again to resume",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
