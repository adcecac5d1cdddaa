"""Site entropy and the 2-D map read only held-out patients: rows of a fold model's own
training patients, marked so that they would change the statistic, never enter it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from stromalens.evaluation.alignment import knn_site_entropy
from stromalens.evaluation.evaluate import (
    _alignment,
    _embeddings,
    _site_entropy_metrics,
    site_k,
)
from stromalens.evaluation.probes import held_out_rows

SITES = "ABCD"


def _embeddings_with_marked_training_rows(seed: int = 0):
    """Three fold models, each embedding all 60 patients: held-out rows well mixed across
    sites, training rows (the marker) in one tight cluster per site, fully site-separated."""
    rng = np.random.default_rng(seed)
    ids = [f"P{i:03d}" for i in range(60)]
    sites = np.array([SITES[i % 4] for i in range(60)])
    folds = pd.Series(np.arange(60) % 3, index=pd.Index(ids, name="patient_id"), name="fold")
    frames = []
    for stage in ("before", "after"):
        for k in range(3):
            x = rng.normal(size=(60, 4))
            train = folds.to_numpy() != k
            codes = np.searchsorted(list(SITES), sites)
            x[train] = 100.0 * codes[train, None] + 0.01 * rng.normal(size=(train.sum(), 4))
            frame = pd.DataFrame(x, columns=[f"e{i}" for i in range(4)])
            frame.insert(0, "stage", stage)
            frame.insert(0, "site", sites)
            frame.insert(0, "patient_id", ids)
            frame.insert(0, "fold", k)
            frames.append(frame)
    return pd.concat(frames, ignore_index=True), folds


def test_held_out_rows_are_the_folds_own_test_patients():
    emb, folds = _embeddings_with_marked_training_rows()
    kept = held_out_rows(emb, folds)
    assert len(kept) == 2 * 60  # each patient once per stage
    assert (kept["patient_id"].map(folds) == kept["fold"]).all()
    assert (kept[["e0", "e1", "e2", "e3"]].abs() < 50).all().all()  # no marked row


def test_site_entropy_never_sees_training_rows():
    emb, folds = _embeddings_with_marked_training_rows()
    context = SimpleNamespace(
        probes={"embeddings": emb}, run=SimpleNamespace(folds=folds, lso=None)
    )
    metrics = _site_entropy_metrics(_embeddings(context))
    cols = ["e0", "e1", "e2", "e3"]
    # Reference: knn_site_entropy on each fold model's held-out rows alone, averaged.
    after = emb[emb["stage"] == "after"]
    own = after[after["patient_id"].map(folds) == after["fold"]]
    # 20 held-out patients per fold model: k = min(10, 20 // 4) = 5
    assert site_k(20) == 5 and site_k(200) == 10 and site_k(3) == 1
    expected = np.mean(
        [knn_site_entropy(p[cols].to_numpy(), p["site"], k=5) for _, p in own.groupby("fold")]
    )
    assert metrics["site_entropy.after"] == pytest.approx(expected, rel=1e-12)
    assert metrics["site_entropy.after"] > 0.6  # well mixed held-out rows
    # had the marked (site-separated) training rows entered, the entropy would collapse
    everything = np.mean(
        [
            knn_site_entropy(part[cols].to_numpy(), part["site"], k=10)
            for _, part in emb[emb["stage"] == "after"].groupby("fold")
        ]
    )
    assert everything < 0.4


def test_embedding_map_holds_held_out_patients_of_one_fold_model():
    emb, folds = _embeddings_with_marked_training_rows()
    context = SimpleNamespace(
        probes={"embeddings": emb}, run=SimpleNamespace(folds=folds, lso=None), seed=0
    )
    table = _alignment(context)["embedding_2d.parquet"]
    assert set(table["patient_id"]) == set(folds.index[folds == 0])
    assert len(table) == 2 * (folds == 0).sum()
