"""Attention overlays: the choice of patients apart from the drawing, and the saved figures."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from stromalens.evaluation.annotations import Annotations
from stromalens.evaluation.attention import TILE_COLUMNS
from stromalens.evaluation.overlays import draw_overlay, save_overlays, select_overlays

from ._annotation_shapes import TILE, geojson, grid, rect


def test_overlays_on_a_synthetic_cohort(small_cohort, tmp_path, caplog):
    import matplotlib.image as mpimg

    from stromalens.cohort import load_manifest

    cohort = load_manifest(small_cohort)
    frame = cohort.frame
    rng = np.random.default_rng(0)
    xs, ys = np.meshgrid(np.arange(0, 1793, 256), np.arange(0, 1281, 256))
    rows = [
        (pid, model, "ers_caf", xi, yi, 256, rng.random())
        for pid in frame.index
        for model in ("fusion", "abmil")
        for xi, yi in zip(xs.ravel(), ys.ravel(), strict=True)
    ]
    tiles = pd.DataFrame(rows, columns=list(TILE_COLUMNS))
    with_slides = frame.index[frame["wsi"].notna() & frame["annotations"].notna()]
    without = frame.index[frame["wsi"].isna()]
    assert len(with_slides) >= 2 and len(without) >= 1
    out = tmp_path / "attention"
    paths = save_overlays(tiles, frame, cohort.path.parent, out, max_patients=2)
    assert len(paths) == 2 and all(p.parent == out for p in paths)
    assert {p.stem for p in paths} <= set(with_slides)
    grades = frame.loc[[p.stem for p in paths], "fibrosis_grade"]
    if frame.loc[with_slides, "fibrosis_grade"].nunique() > 1:
        assert grades.nunique() == 2  # chosen across grades
    image = mpimg.imread(paths[0])
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    with caplog.at_level("WARNING", logger="stromalens"):
        paths = save_overlays(
            tiles, frame, cohort.path.parent, out, patients=[without[0], with_slides[0]],
            model="abmil",
        )  # fmt: skip
    assert [p.stem for p in paths] == [with_slides[0]]
    record = [r for r in caplog.records if "overlays skipped" in r.getMessage()][-1]
    assert record.fields["patients"] == without[0] and record.fields["n"] == 1
    with pytest.raises(ValueError, match="model 'nope'"):
        save_overlays(tiles, frame, cohort.path.parent, out, model="nope")


# --------------------------------------------------------------------------- selection
def hand_made_cohort(tmp_path):
    """Six patients with annotations and (empty) slide files, one without a slide; grades
    0, 0, 1, 1, 3, missing; tiles of two models × two targets, one patient absent from the
    manifest."""
    x, y = grid(3, 3)
    doc = geojson([[rect(0, 0, TILE, TILE)]], np.array([[5.0, 5.0]]))
    (tmp_path / "ann.geojson").write_text(json.dumps(doc))
    (tmp_path / "slide.tif").write_bytes(b"")
    pids = ["P0", "P1", "P2", "P3", "P4", "P5", "P6"]
    frame = pd.DataFrame(
        {
            "annotations": "ann.geojson",
            "wsi": ["slide.tif"] * 6 + [None],
            "fibrosis_grade": pd.array([0, 0, 1, 1, 3, None, 2], dtype="Int64"),
        },
        index=pd.Index(pids, name="patient_id"),
    )
    rows = [
        (pid, model, target, xi, yi, TILE, float(xi + yi))
        for pid in [*pids, "P9"]
        for model in ("abmil", "fusion")
        for target in ("ers_caf", "lr")
        for xi, yi in zip(x, y, strict=True)
    ]
    return pd.DataFrame(rows, columns=list(TILE_COLUMNS)), frame


def test_select_overlays_spreads_over_grades_and_names_skips(tmp_path):
    tiles, frame = hand_made_cohort(tmp_path)
    choice = select_overlays(tiles, frame, tmp_path, max_patients=4)
    assert (choice.model, choice.target) == ("fusion", "ers_caf")
    # Round-robin over grades 0, 1, 3, missing: the first patient of each.
    assert [item.patient_id for item in choice.inputs] == ["P0", "P2", "P4", "P5"]
    assert choice.skipped == {"P6": "no slide", "P9": "patient not in the manifest"}
    first = choice.inputs[0]
    assert first.slide == tmp_path / "slide.tif" and first.mpp is None
    assert len(first.tiles) == 9 and set(first.tiles["model"]) == {"fusion"}
    assert len(first.annotations.polygons) == 1
    more = select_overlays(tiles, frame, tmp_path, max_patients=6)
    assert [item.patient_id for item in more.inputs] == ["P0", "P2", "P4", "P5", "P1", "P3"]
    assert not list(tmp_path.glob("*.png"))  # selecting draws nothing


def test_select_overlays_keeps_the_requested_order(tmp_path):
    tiles, frame = hand_made_cohort(tmp_path)
    choice = select_overlays(
        tiles, frame, tmp_path, patients=["P3", "nobody", "P1"], model="abmil", target="lr"
    )
    assert (choice.model, choice.target) == ("abmil", "lr")
    assert [item.patient_id for item in choice.inputs] == ["P3", "P1"]
    assert choice.skipped == {"nobody": "no attention tiles"}
    with pytest.raises(ValueError, match="target 'nope'"):
        select_overlays(tiles, frame, tmp_path, target="nope")


# --------------------------------------------------------------------------- drawing
def test_draw_overlay_renders_one_figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    x, y = grid(4, 4)
    ann = Annotations(
        [[rect(0, 0, 2 * TILE, 2 * TILE), rect(8, 8, 24, 24)]], np.array([[10.0, 40.0]])
    )
    fig = draw_overlay(
        np.zeros((64, 64, 3)), (4 * TILE, 4 * TILE), x, y, TILE, np.arange(16.0), ann,
        k=3, title="P0 · fusion", subdivisions=2,
    )  # fmt: skip
    try:
        ax = fig.axes[0]
        assert ax.get_title() == "P0 · fusion"
        squares = [p for p in ax.patches if isinstance(p, Rectangle)]
        assert sorted((p.get_x(), p.get_y()) for p in squares) == [(32, 96), (64, 96), (96, 96)]
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels == ["fibrosis", "top-3 tiles", "immune exclusion"]
        heat = ax.images[1].get_array()
        assert heat.max() == pytest.approx(1.0) and heat.min() == 0.0  # scaled to the maximum
    finally:
        plt.close(fig)
