"""Where each stage reads and writes, for one pipeline.

Inside a Kaggle kernel (``KAGGLE_KERNEL_RUN_TYPE`` is set) outputs go under ``/kaggle/working``
and a Kaggle source is read where the kernel mounts it under ``/kaggle/input`` (read-only).
``FOLDSTACK_KAGGLE_INPUT`` and ``FOLDSTACK_KAGGLE_WORKING`` move those two roots, so a kernel can
be simulated in a temporary folder.

``/kaggle/working`` keeps 20 GB and is saved as the notebook's output, so in a kernel what is big
and can be rebuilt goes to scratch (:func:`scratch_root`): the image caches, the unpacked copy of
a zipped competition, and (the ``kernel`` stage) the bundle's artifacts and every stage's output.
``/kaggle/working`` receives the submission and small logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from foldstack.core.config import PipelineConfig


def user_cache(kind: str) -> Path:
    """Where foldstack keeps what it can rebuild and every pipeline shares (converted ImageNet
    weights, compiled programs): ``$FOLDSTACK_CACHE/<kind>``, else ``~/.cache/foldstack/<kind>``."""
    return Path(os.environ.get("FOLDSTACK_CACHE") or Path.home() / ".cache" / "foldstack") / kind


def in_kaggle_kernel() -> bool:
    """Whether this process runs inside a Kaggle notebook or script."""
    return "KAGGLE_KERNEL_RUN_TYPE" in os.environ


def kaggle_input_root() -> Path:
    return Path(os.environ.get("FOLDSTACK_KAGGLE_INPUT") or "/kaggle/input")


def kaggle_working_root() -> Path:
    return Path(os.environ.get("FOLDSTACK_KAGGLE_WORKING") or "/kaggle/working")


def kaggle_input_candidates(source: Any) -> list[Path]:
    """Where a kernel may mount a Kaggle source, newest layout first; [] for other sources.

    Newer kernels mount a competition under ``competitions/<slug>`` (and a dataset under
    ``datasets/<owner>/<name>``); older ones mount both directly under the input root.
    """
    root = kaggle_input_root()
    if source.type == "kaggle_competition":
        return [root / "competitions" / source.competition, root / source.competition]
    if source.type == "kaggle_dataset":
        owner, name = source.dataset.split("/")
        return [root / "datasets" / owner / name, root / name]
    return []


def kaggle_mounted_input(source: Any) -> Path | None:
    """The folder where the kernel mounts ``source``, or None where it is not attached."""
    return next((path for path in kaggle_input_candidates(source) if path.is_dir()), None)


#: The endings of the archives a download unpacks (``data/archives.py``), longest first.
ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tar", ".zip", ".7z", ".gz")


def archive_suffix(name: str) -> str | None:
    """The archive ending of a file name (``.tar.gz`` of ``train.tar.gz``), or None."""
    return next((suffix for suffix in ARCHIVE_SUFFIXES if name.lower().endswith(suffix)), None)


def holds_archives(folder: Path) -> bool:
    """Whether ``folder`` holds an archive at its top, as a competition ships ``train.zip``."""
    return any(archive_suffix(path.name) for path in folder.iterdir() if path.is_file())


def scratch_root() -> Path:
    """A kernel's disk for what need not be kept: ``$FOLDSTACK_SCRATCH``, else ``/kaggle/temp`` where
    it exists, else ``/tmp/foldstack``."""
    if os.environ.get("FOLDSTACK_SCRATCH"):
        return Path(os.environ["FOLDSTACK_SCRATCH"])
    temp = Path("/kaggle/temp")
    return temp if temp.is_dir() else Path("/tmp/foldstack")


def _default_root() -> Path:
    return kaggle_working_root() if in_kaggle_kernel() else Path.cwd()


@dataclass(frozen=True)
class Paths:
    """The folders of one pipeline, under a project root.

    The root defaults to the working directory (``/kaggle/working`` in a Kaggle kernel).
    ``mounted_data``, when set, is a read-only folder that replaces ``root/data/<pipeline>``.
    ``scratch``, when set (in a kernel: :func:`scratch_root`), holds the image caches and the
    downloaded or unpacked data instead of the root.
    """

    pipeline: str
    root: Path
    mounted_data: Path | None = None
    scratch: Path | None = None

    @classmethod
    def for_pipeline(cls, pipeline: str, root: str | Path | None = None,
                     mounted_data: Path | None = None) -> Paths:
        scratch = scratch_root() if in_kaggle_kernel() else None
        return cls(pipeline, Path(root) if root is not None else _default_root(), mounted_data, scratch)

    @classmethod
    def for_config(cls, cfg: PipelineConfig, root: str | Path | None = None) -> Paths:
        """The paths of ``cfg``; in a Kaggle kernel, data is the attached input if there is one,
        unless it ships archives to unpack (``data.unpack``): the read-only mount cannot hold
        them unpacked, so the download stage lays an unpacked copy out under the working root."""
        mounted = kaggle_mounted_input(cfg.data.source) if in_kaggle_kernel() else None
        if mounted is not None and cfg.data.unpack and holds_archives(mounted):
            mounted = None
        return cls.for_pipeline(cfg.name, root, mounted)

    @property
    def data(self) -> Path:
        return self.mounted_data or (self.scratch or self.root) / "data" / self.pipeline

    def extra_data(self, source: Any) -> Path:
        """Where a ``data.extra`` dataset lies: a local one where its path says; a Kaggle one where
        a kernel mounts it, else where ``download`` puts it, a folder of its own beside the
        pipelines' data (``data/_extra/competitions/<slug>``, ``data/_extra/datasets/<owner>/<name>``,
        as a kernel mounts them; a pipeline's name cannot start with ``_``)."""
        if source.type == "local":
            return Path(source.path).expanduser()
        mounted = kaggle_mounted_input(source) if in_kaggle_kernel() else None
        if mounted is not None:
            return mounted
        kind, name = (("competitions", source.competition) if source.type == "kaggle_competition"
                      else ("datasets", source.dataset))
        return (self.scratch or self.root) / "data" / "_extra" / kind / name

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts" / self.pipeline

    @property
    def folds(self) -> Path:
        return self.artifacts / "folds.csv"

    @property
    def cache(self) -> Path:
        """The resized images (``data/cache.py``): under the artifacts, or in scratch (a kernel)."""
        return self.scratch / "cache" / self.pipeline if self.scratch else self.artifacts / "cache"

    @property
    def models(self) -> Path:
        return self.artifacts / "models"

    @property
    def oof(self) -> Path:
        return self.artifacts / "oof"

    @property
    def test(self) -> Path:
        return self.artifacts / "test"

    @property
    def stack(self) -> Path:
        return self.artifacts / "stack"

    @property
    def submissions(self) -> Path:
        return self.root / "submissions" / self.pipeline

    @property
    def bundle(self) -> Path:
        """The folder ``make bundle`` fills, uploaded as one Kaggle dataset."""
        return self.root / "bundle" / self.pipeline

    @property
    def kernel(self) -> Path:
        """The inference kernel ``make kernel-push`` pushes: its script and ``kernel-metadata.json``."""
        return self.root / "kernel" / self.pipeline
