"""Submissions: one test per validation rule with its exact message, the formats, the index,
and the submit stage on a stack output written by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from foldstack.contracts import folds_file, stack_output, submission_index
from foldstack.core import files as io
from foldstack.core.config import PipelineConfig
from foldstack.core.errors import DataError
from foldstack.data.labels import Classes
from foldstack.core.paths import Paths
from foldstack.pipeline import parse_pipeline
from foldstack.stages import submit
from foldstack.stages.submit import SubmissionError

CLASSES = ("cat", "dog", "owl")
IDS = ["a", "b", "c"]
PROBA = pd.DataFrame([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]], index=pd.Index(IDS, name="id"),
                     columns=list(CLASSES))


def sample(*columns: str) -> pd.DataFrame:
    return pd.DataFrame({"id": IDS, **{column: "0" for column in columns}})


def validate(frame: pd.DataFrame, fmt: str, task: str = "multiclass", classes: tuple[str, ...] = CLASSES,
             columns: tuple[str, ...] = ("label",)) -> None:
    submit.validate(frame, sample(*columns), id_column="id", classes=classes, fmt=fmt, task=task)


def labels(*values: str, ids: list[str] = IDS) -> pd.DataFrame:
    return pd.DataFrame({"id": ids, "label": list(values)})


def probabilities(rows: list[list[float]], ids: list[str] = IDS) -> pd.DataFrame:
    return pd.DataFrame({"id": ids, **dict(zip(CLASSES, np.array(rows).T))})


# --- one test per rule --------------------------------------------------------------------------


RULES = [
    pytest.param(labels("cat", "dog", "owl").rename(columns={"label": "class"}), "label", {},
                 "same columns as the sample submission: got id, class, expected id, label", id="same columns"),
    pytest.param(labels("cat", "dog", "owl", ids=["a", "b", "b"]), "label", {},
                 "every id exactly once: id 'b' appears 2 times", id="id repeated"),
    pytest.param(labels("cat", "dog", ids=["a", "b"]), "label", {},
                 "every id exactly once: id 'c' of the sample submission is missing", id="id missing"),
    pytest.param(labels("cat", "dog", "owl", "cat", ids=[*IDS, "z"]), "label", {},
                 "every id exactly once: id 'z' is not in the sample submission", id="id extra"),
    pytest.param(labels("cat", "dog", "owl", ids=["b", "a", "c"]), "label", {},
                 "same order as the sample submission: row 1 (id 'b') where the sample submission has id 'a'",
                 id="same order"),
    pytest.param(probabilities([[0.5, 0.5, 0.0], [-0.2, 1.2, 0.0], [0.0, 0.0, 1.0]]), "probabilities",
                 {"columns": CLASSES}, "probabilities in [0, 1]: row 2 (id 'b') has cat = -0.2", id="in [0, 1]"),
    pytest.param(pd.DataFrame({"id": IDS, "target": [0.1, np.nan, 0.9]}), "binary",
                 {"classes": ("0", "1"), "columns": ("target",)},
                 "probabilities in [0, 1]: row 2 (id 'b') has target = nan", id="in [0, 1] NaN"),
    pytest.param(probabilities([[0.5, 0.5, 0.0], [0.2, 0.8, 0.0], [0.3, 0.3, 0.3]]), "probabilities",
                 {"columns": CLASSES}, "rows sum to 1: row 3 (id 'c') sums to 0.9", id="rows sum to 1"),
    pytest.param(labels("cat", "emu", "owl"), "label", {},
                 "labels from the class set: row 2 (id 'b') has 'emu'; classes: cat, dog, owl", id="labels"),
    pytest.param(labels("cat dog", "", "owl emu"), "multilabel", {"task": "multilabel"},
                 "labels from the class set: row 3 (id 'c') has 'emu'; classes: cat, dog, owl",
                 id="labels multilabel"),
]


@pytest.mark.parametrize(("frame", "fmt", "options", "message"), RULES)
def test_each_rule_says_what_broke_where(frame: pd.DataFrame, fmt: str, options: dict, message: str) -> None:
    with pytest.raises(SubmissionError) as error:
        validate(frame, fmt, **options)
    assert str(error.value) == message


def test_valid_submissions_pass() -> None:
    validate(labels("cat", "dog", "owl"), "label")
    validate(labels("cat dog", "", "owl"), "multilabel", task="multilabel")


def test_rows_within_the_tolerance_pass_and_multilabel_rows_need_not_sum_to_one() -> None:
    validate(probabilities([[0.5, 0.5 + 5e-7, 0.0], [0.2, 0.8, 0.0], [0, 0, 1]]), "probabilities", columns=CLASSES)
    validate(probabilities([[0.9, 0.9, 0.9], [0, 0, 0], [0.5, 0.1, 0.0]]), "probabilities", task="multilabel",
             columns=CLASSES)


# --- formats ------------------------------------------------------------------------------------


def test_label_format_takes_the_most_probable_class() -> None:
    built = submit.build(PROBA, sample("label"), "id", "label")
    assert built.to_dict("list") == {"id": IDS, "label": ["cat", "owl", "dog"]}


def test_probability_format_follows_the_sample_column_order() -> None:
    built = submit.build(PROBA, sample("owl", "cat", "dog"), "id", "probabilities")
    assert list(built.columns) == ["id", "owl", "cat", "dog"]
    np.testing.assert_allclose(built["owl"], PROBA["owl"])


def test_multilabel_format_lists_classes_at_or_above_one_half() -> None:
    proba = pd.DataFrame([[0.5, 0.9, 0.1], [0.1, 0.2, 0.3], [0.6, 0.0, 0.7]], columns=list(CLASSES))
    built = submit.build(proba, sample("tags"), "id", "multilabel")
    assert built["tags"].tolist() == ["cat dog", "", "cat owl"]


@pytest.mark.parametrize(("column", "expected"), [("target", [0.8, 0.4]), ("no", [0.2, 0.6])])
def test_binary_format_writes_the_positive_class(column: str, expected: list[float]) -> None:
    # A column named after a class is that class's probability; any other name is the second class.
    proba = pd.DataFrame([[0.2, 0.8], [0.6, 0.4]], columns=["no", "yes"])
    built = submit.build(proba, pd.DataFrame({"id": ["a", "b"], column: "0"}), "id", "binary")
    np.testing.assert_allclose(built[column], expected)


@pytest.mark.parametrize(("fmt", "columns", "message"), [
    ("label", ("x", "y"), "format 'label' needs one column beside the id; the sample submission has 2: x, y"),
    ("probabilities", ("cat", "dog"), "format 'probabilities' needs one column per class (cat, dog, owl); "
                                      "the sample submission has cat, dog"),
    ("binary", ("target",), "format 'binary' needs two classes; there are 3"),
])
def test_a_format_that_does_not_fit_the_sample_says_so(fmt: str, columns: tuple[str, ...], message: str) -> None:
    with pytest.raises(SubmissionError) as error:
        submit.build(PROBA, sample(*columns), "id", fmt)
    assert str(error.value) == message


# --- index --------------------------------------------------------------------------------------


def test_index_appends_new_files_and_updates_a_rewritten_one(tmp_path: Path) -> None:
    path = tmp_path / "index.csv"
    submission_index.update(path, {"file": "p-mean-cv0.9000.csv", "cv_mean": 0.9, "local_lb": None})
    submission_index.update(path, {"file": "p-lightgbm-cv0.9500.csv", "cv_mean": 0.95, "local_lb": 0.94})
    submission_index.update(path, {"file": "p-mean-cv0.9000.csv", "cv_mean": 0.9, "local_lb": 0.91})
    index = pd.read_csv(path)
    assert index["file"].tolist() == ["p-lightgbm-cv0.9500.csv", "p-mean-cv0.9000.csv"]
    assert index["local_lb"].tolist() == [0.94, 0.91]


# --- the stage ----------------------------------------------------------------------------------


def pipeline(root: Path, fmt: str = "probabilities", solution: bool = True, proba: pd.DataFrame = PROBA,
             sample_columns: tuple[str, ...] = ("dog", "cat", "owl"), answers: tuple[str, ...] = ("cat", "owl", "owl"),
             **top) -> tuple[PipelineConfig, Paths]:
    """The folds' class order (the stack output's columns), a stack output (chosen.json,
    test.parquet), a sample submission and a solution (``answers``); ``top``: YAML keys."""
    cfg = parse_pipeline({
        "name": "tiny", "metric": "log_loss", "submission": {"format": fmt},
        "data": {"source": {"type": "embedded", "dataset": "digits"}, "solution": "solution.csv"},
        "models": [{"name": "m", "backbone": "mobilenet_v2"}], **top,
    })
    paths = Paths.for_pipeline("tiny", root)
    names = tuple(proba.columns)
    folds = pd.DataFrame({"id": [f"t{i}" for i in range(len(names))], "label": names, "fold": 0})
    folds_file.write(paths.folds, folds, Classes(names), cfg.task)
    io.write_json(paths.stack / "chosen.json", {"name": "mean", "metric": "log_loss", "cv_mean": 0.61234, "cv_std": 0.02})
    io.write_parquet(paths.stack / "test.parquet", proba.reset_index())
    io.write_csv(paths.data / "sample_submission.csv", sample(*sample_columns))
    if solution:
        io.write_csv(paths.data / "solution.csv", pd.DataFrame({"id": IDS, "label": list(answers)}))
    return cfg, paths


def test_run_writes_a_named_file_scores_it_and_calls_upload(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, paths = pipeline(tmp_path)
    uploaded = []

    path = submit.run(cfg, paths, upload=uploaded.append)

    assert path == paths.submissions / "tiny-mean-cv0.6123.csv" and uploaded == [path]
    written = pd.read_csv(path, dtype={"id": str})
    assert list(written.columns) == ["id", "dog", "cat", "owl"]
    np.testing.assert_allclose(written[["cat", "dog", "owl"]], PROBA)
    lb = -np.mean(np.log([0.7, 0.6, 0.3]))
    assert pd.read_csv(paths.submissions / "index.csv")["local_lb"].item() == pytest.approx(lb)
    out = capsys.readouterr().out
    assert "CV log_loss 0.6123 +/- 0.0200 (mean)" in out and f"local LB log_loss {lb:.4f}" in out


def test_run_records_the_public_score_the_upload_returns(tmp_path: Path) -> None:
    cfg, paths = pipeline(tmp_path)
    path = submit.run(cfg, paths, upload=lambda written: 0.5123)
    index = pd.read_csv(paths.submissions / "index.csv")
    assert index["file"].tolist() == [path.name] and index["public_lb"].tolist() == [0.5123]
    submit.run(cfg, paths, upload=lambda written: None)  # not scored yet: the row has no public score
    assert pd.read_csv(paths.submissions / "index.csv")["public_lb"].isna().all()


def test_run_without_a_solution_prints_no_local_score(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, paths = pipeline(tmp_path, solution=False)
    submit.run(cfg, paths)
    assert "local LB" not in capsys.readouterr().out
    assert pd.read_csv(paths.submissions / "index.csv")["local_lb"].isna().all()


def test_run_submits_the_stack_output_as_it_is(tmp_path: Path) -> None:
    """Rows are renormalised where CV scores them (the stack stage), never after: a stack output
    whose rows drift from 1 is refused, not quietly changed."""
    cfg, paths = pipeline(tmp_path, proba=PROBA * (1 - 1e-5))
    with pytest.raises(SubmissionError, match=r"rows sum to 1: row 1 \(id 'a'\) sums to 0.99999"):
        submit.run(cfg, paths)
    assert not paths.submissions.exists()


def test_run_writes_nothing_when_validation_fails(tmp_path: Path) -> None:
    cfg, paths = pipeline(tmp_path, fmt="binary", sample_columns=("target",))
    with pytest.raises(SubmissionError, match="format 'binary' needs two classes"):
        submit.run(cfg, paths)
    assert not paths.submissions.exists()


def test_run_needs_every_sample_id_in_the_stack_output(tmp_path: Path) -> None:
    cfg, paths = pipeline(tmp_path, proba=PROBA.iloc[:2])
    with pytest.raises(DataError, match=r"stack/test.parquet: 1 id\(s\) of .*sample_submission.csv missing, e.g. 'c'"):
        submit.run(cfg, paths)


def test_run_without_a_stack_output_says_which_stage_to_run(tmp_path: Path) -> None:
    cfg, paths = pipeline(tmp_path)
    (paths.stack / "chosen.json").unlink()
    with pytest.raises(DataError, match="chosen.json: not found; run the stack stage first"):
        submit.run(cfg, paths)


def test_read_stack_output_gives_the_choice_and_its_probabilities(tmp_path: Path) -> None:
    _, paths = pipeline(tmp_path)
    output = stack_output.read(paths.stack)
    assert (output.name, output.metric, output.cv_mean) == ("mean", "log_loss", 0.61234)
    pd.testing.assert_frame_equal(output.proba, PROBA, check_names=False)


def test_a_binary_task_with_named_classes_is_scored_on_its_solution(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """'cat' and 'dog' say nothing of which is positive: the folds' class order does (dog, second)."""
    proba = pd.DataFrame({"cat": [0.8, 0.3, 0.4], "dog": [0.2, 0.7, 0.6]}, index=pd.Index(IDS, name="id"))
    cfg, paths = pipeline(tmp_path, fmt="binary", proba=proba, sample_columns=("label",), answers=("cat", "dog", "cat"),
                          task="binary", positive_class="dog")
    written = pd.read_csv(submit.run(cfg, paths), dtype={"id": str})
    np.testing.assert_allclose(written["label"], [0.2, 0.7, 0.6])  # P(dog)
    lb = -np.mean(np.log([0.8, 0.7, 0.4]))
    assert pd.read_csv(paths.submissions / "index.csv")["local_lb"].item() == pytest.approx(lb)
    assert f"local LB log_loss {lb:.4f}" in capsys.readouterr().out
