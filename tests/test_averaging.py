"""A model's ``average``: best.weights.h5 becomes the average of the epochs its method picks
(swa, top_k, greedy soup), records them, and a resumed fold averages the same checkpoints."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from foldstack.training import regimes
from foldstack.training.averaging import SNAPSHOTS, averaged_epochs
from foldstack.training.callbacks import load_weights
from foldstack.training.phases import BEST

from test_phases import Spy, scripted
from test_train import fold_task, model_config


def _mean(*sets):
    return [np.mean(arrays, axis=0) for arrays in zip(*sets)]


def _assert_best_is(network: keras.Model, fold_dir: Path, expected: list[np.ndarray]) -> None:
    load_weights(network, fold_dir / BEST)
    for got, want in zip(network.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("average, extra_scores, chosen", [
    ({"method": "swa", "from_epoch": 1}, [], [1, 2, 3]),
    ({"method": "top_k", "k": 2}, [], [1, 3]),
    # From the best (1) down: +3 improves (0.95), +2 does not (0.93 < 0.95), +0 improves (0.96).
    ({"method": "greedy_soup"}, [0.95, 0.93, 0.96], [0, 1, 3]),
])
def test_best_weights_become_the_average(tiny_digits, tmp_path: Path, average, extra_scores, chosen) -> None:
    model = model_config(regime="scratch", epochs=4, patience=4, average=average)
    task, images = fold_task(tiny_digits, tmp_path, model)
    metric, left = scripted([0.5, 0.9, 0.6, 0.7, *extra_scores])
    spy = Spy()
    regimes.fit(task, images, metric, callbacks=[spy])
    assert not left
    assert averaged_epochs(task.fold_dir / BEST) == chosen
    _assert_best_is(spy.model, task.fold_dir, _mean(*(spy.epoch_ends[e] for e in chosen)))
    assert not (task.fold_dir / SNAPSHOTS).exists()  # nothing left for the bundle to skip


def test_a_resumed_fold_averages_the_same_checkpoints(tiny_digits, tmp_path: Path) -> None:
    """Killed at the start of epoch 2: the rerun trains epochs 2 and 3 and averages them with
    the killed run's epochs 0 and 1, as they were."""
    model = model_config(regime="finetune", epochs=4, head_epochs=1, patience=4, finetune_lr=1e-3,
                         average={"method": "swa"})
    task, images = fold_task(tiny_digits, tmp_path, model)
    metric, _ = scripted([0.5, 0.9])
    first = Spy(interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        regimes.fit(task, images, metric, callbacks=[first])
    assert sorted(p.name for p in (task.fold_dir / SNAPSHOTS).iterdir()) == ["epoch-0.weights.h5", "epoch-1.weights.h5"]

    keras.backend.clear_session()
    task, images = fold_task(tiny_digits, tmp_path, model)
    metric, _ = scripted([0.6, 0.7])
    rerun = Spy()
    regimes.fit(task, images, metric, callbacks=[rerun])
    assert averaged_epochs(task.fold_dir / BEST) == [0, 1, 2, 3]
    _assert_best_is(rerun.model, task.fold_dir, _mean(first.epoch_ends[0], first.epoch_ends[1],
                                                      rerun.epoch_ends[2], rerun.epoch_ends[3]))

    # Killed after the average was written: a rerun trains nothing and keeps it.
    keras.backend.clear_session()
    task, images = fold_task(tiny_digits, tmp_path, model)
    again = Spy()
    regimes.fit(task, images, scripted([])[0], callbacks=[again])
    assert not again.fits and averaged_epochs(task.fold_dir / BEST) == [0, 1, 2, 3]


def test_the_train_stage_records_the_epochs_and_predict_reads_the_average(tiny_digits) -> None:
    """Through the stages: each fold's done.json says which epochs its best.weights.h5 averages,
    and the predict stage predicts with those files as with any fold's."""
    import json

    import pandas as pd

    from foldstack.stages import predict, train

    from conftest import make_config
    from test_train import MODEL

    cfg, paths = tiny_digits
    cfg = make_config(models=[{**MODEL, "name": "averaged", "regime": "features", "epochs": 3, "patience": 3,
                               "average": {"method": "top_k", "k": 2}}])
    train.run(cfg, paths, workers=1)
    for fold in (0, 1):
        fold_dir = paths.models / "averaged" / f"fold{fold}"
        done = json.loads((fold_dir / "done.json").read_text())
        assert done["averaged"] == averaged_epochs(fold_dir / BEST) and len(done["averaged"]) == 2
    predict.run(cfg, paths, workers=1)
    test = pd.read_parquet(paths.test / "averaged.parquet")
    assert len(test) > 0 and np.allclose(test.drop(columns="id").sum(axis=1), 1.0, atol=1e-4)
