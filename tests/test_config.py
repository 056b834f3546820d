"""The pipeline YAML: valid files load; each kind of mistake is one line naming the key."""

from pathlib import Path

import pytest
import yaml

from foldstack.core.config import ConfigError
from foldstack.pipeline import load_pipeline

from conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "pipelines").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_pipelines_load(path: Path) -> None:
    cfg = load_pipeline(path)
    assert cfg.name == path.stem


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _with(change) -> dict:
    import copy

    raw = copy.deepcopy(TINY)
    change(raw)
    return raw


@pytest.mark.parametrize("change, expected", [
    (lambda r: r.update(colour="blue"), "colour = 'blue': unknown key"),
    (lambda r: r["models"][0].update(epochs="ten"), "models.0.epochs = 'ten': Input should be a valid integer"),
    (lambda r: r["models"][0].update(backbone="resnet9000"), "models.0.backbone = 'resnet9000': Value error, unknown backbone; known:"),
    (lambda r: r.update(metric="vibes"), "metric = 'vibes': Value error, unknown metric; known:"),
    (lambda r: r["models"][0].update(regime="magic"), "models.0.regime = 'magic': Input should be 'features', 'finetune', 'partial' or 'scratch'"),
    (lambda r: r.pop("data"), "data: required key is missing"),
    (lambda r: r["data"]["source"].update(type="ftp"), "data.source.type = 'ftp': must be one of 'embedded', 'kaggle_competition', 'kaggle_dataset', 'local'"),
    (lambda r: r["folds"].update(k=1), "folds.k = 1: Input should be greater than or equal to 2"),
    (lambda r: r["models"].append(dict(r["models"][0])), "models = [{"),
    (lambda r: r.update(augment={"train": [{"__class_fullname__": "NoSuchTransform"}]}),
     "augment.train = [{'__class_fullname__': 'NoSuchTransform'}]: Value error, not a valid albumentations pipeline"),
])
def test_mistakes_name_the_key(tmp_path: Path, change, expected: str) -> None:
    path = _write(tmp_path, _with(change))
    with pytest.raises(ConfigError) as error:
        load_pipeline(path)
    message = str(error.value)
    assert message.startswith(f"{path}: {expected}"), message
    assert "\n" not in message


def test_missing_file_lists_available(tmp_path: Path) -> None:
    (tmp_path / "other.yaml").write_text("name: other\n")
    with pytest.raises(ConfigError, match=r"nope.yaml: pipeline file not found; available: other"):
        load_pipeline(tmp_path / "nope.yaml")


def test_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline(path)


def test_config_is_immutable(tmp_path: Path) -> None:
    cfg = load_pipeline(_write(tmp_path, TINY))
    with pytest.raises(Exception):
        cfg.models[0].epochs = 3



def _model(**fields) -> dict:
    return {**TINY["models"][0], "backbone": "small_cnn", "image_size": 16, **fields}


#: The recipe refusals README lists: the models refused, the same models with the one setting
#: changed (they load: the refusal is about that setting alone), the key the line names and what
#: it says.
REFUSALS = {
    "mixup and cutmix p above 1": ([_model(mixup={"alpha": 0.2, "p": 0.6}, cutmix={"alpha": 1.0, "p": 0.5})],
                                   [_model(mixup={"alpha": 0.2, "p": 0.6}, cutmix={"alpha": 1.0, "p": 0.4})],
                                   "models.0.cutmix", "cutmix.p + mixup.p = 1.1", "add up to 1 at most"),
    "a seed-bagged teacher": ([_model(name="teacher", seeds=[0, 1]), _model(name="student", distill={"from": ["teacher"]})],
                              [_model(name="teacher"), _model(name="student", distill={"from": ["teacher"]})],
                              "models", "models[1].distill.from: 'teacher' has seeds",
                              "seed-bagged teachers are not supported"),
    "progressive with features": ([_model(regime="features", epochs=3, progressive=[{"size": 8, "epochs": 1}])],
                                  [_model(regime="scratch", epochs=3, progressive=[{"size": 8, "epochs": 1}])],
                                  "models.0.progressive", "not 'features'"),
    "mixup with features": ([_model(regime="features", mixup={"alpha": 0.2, "p": 0.5})],
                            [_model(regime="scratch", mixup={"alpha": 0.2, "p": 0.5})],
                            "models.0.mixup", "not 'features'"),
    "cutmix with features": ([_model(regime="features", cutmix={"alpha": 1.0, "p": 0.5})],
                             [_model(regime="scratch", cutmix={"alpha": 1.0, "p": 0.5})],
                             "models.0.cutmix", "not 'features'"),
    "duplicate seeds": ([_model(seeds=[3, 1, 3])], [_model(seeds=[3, 1])], "models.0.seeds", "seeds must be distinct"),
}


@pytest.mark.parametrize("name", REFUSALS)
def test_recipe_refusals_name_the_key(tmp_path: Path, name: str) -> None:
    refused, accepted, key, *said = REFUSALS[name]
    path = _write(tmp_path, {**TINY, "models": refused})
    with pytest.raises(ConfigError) as error:
        load_pipeline(path)
    message = str(error.value)
    assert message.startswith(f"{path}: {key}") and "\n" not in message, message
    assert all(part in message for part in said), message
    load_pipeline(_write(tmp_path, {**TINY, "models": accepted}))
