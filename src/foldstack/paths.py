"""Where each stage reads and writes, for one pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    """The folders of one pipeline, under a project root (the working directory by default)."""

    pipeline: str
    root: Path

    @classmethod
    def for_pipeline(cls, pipeline: str, root: str | Path | None = None) -> Paths:
        return cls(pipeline, Path(root) if root is not None else Path.cwd())

    @property
    def data(self) -> Path:
        return self.root / "data" / self.pipeline

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts" / self.pipeline

    @property
    def folds(self) -> Path:
        return self.artifacts / "folds.csv"

    @property
    def cache(self) -> Path:
        return self.artifacts / "cache"

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
