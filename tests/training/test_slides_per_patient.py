"""Several slides per patient: manifest → slide table → embedding jobs → one pooled bag."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stromalens.cohort import ManifestError, load_manifest
from stromalens.training.data import read_bags, read_patient_tiles
from stromalens.wsi.embed import jobs_from_manifest
from stromalens.wsi.store import SlideFeatures, write_slide


def _manifest(tmp_path, rows: str):
    for name in ("a.tiff", "b.tiff", "c.tiff"):
        (tmp_path / name).write_bytes(b"")
    path = tmp_path / "cohort.csv"
    path.write_text("patient_id,site,wsi,wsi_mpp,slide_id,age,os_time,os_event\n" + rows)
    return path


TWO_SLIDES = "P1,S1,a.tiff,,,50,10,1\nP1,,b.tiff,0.25,,,,\nP2,S2,c.tiff,,P2-HE,60,5,0\n"


def test_a_patient_on_two_rows_has_two_slides_and_one_patient_row(tmp_path):
    cohort = load_manifest(_manifest(tmp_path, TWO_SLIDES))
    assert cohort.patients == ["P1", "P2"]
    assert cohort.frame.loc["P1", "age"] == 50 and cohort.frame.loc["P1", "site"] == "S1"
    assert cohort.slide_ids() == {"P1": ["P1", "P1.2"], "P2": ["P2-HE"]}
    slides = cohort.slides.set_index("slide_id")
    assert slides.loc["P1.2", "mpp"] == 0.25 and np.isnan(slides.loc["P1", "mpp"])
    assert slides.loc["P1.2", "path"] == tmp_path / "b.tiff"
    jobs = {j.slide_id: j for j in jobs_from_manifest(tmp_path / "cohort.csv")}
    assert sorted(jobs) == ["P1", "P1.2", "P2-HE"] and jobs["P1.2"].mpp == 0.25


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("P1,S1,a.tiff,,,50,10,1\nP1,S2,b.tiff,,,,,\n", "differs from patient 'P1'"),
        ("P1,S1,a.tiff,,,50,10,1\nP1,,,,,,,\n", "must list one more slide"),
        ("P1,S1,a.tiff,,X,50,10,1\nP2,S1,b.tiff,,X,51,10,1\n", "'X' is not unique"),
        ("P1,S1,a.tiff,,../x,50,10,1\n", "cannot name a file"),
    ],
)
def test_inconsistent_slide_rows_are_refused(tmp_path, rows, message):
    with pytest.raises(ManifestError, match=message):
        load_manifest(_manifest(tmp_path, rows))


def _store(features_dir, slide_id, n, value, width=4):
    coords = np.column_stack([np.arange(n) * 224, np.zeros(n)]).astype(np.int64)
    feats = np.full((n, width), value, np.float32)
    write_slide(
        features_dir / f"{slide_id}.h5",
        SlideFeatures(coords, feats, {}, {"tile_level0_px": 224.0, "slide_id": slide_id}),
    )


def test_a_patients_bag_pools_its_slides_in_order(tmp_path):
    cohort = load_manifest(_manifest(tmp_path, TWO_SLIDES))
    features = tmp_path / "features"
    features.mkdir()
    _store(features, "P1", 3, 1.0)
    _store(features, "P1.2", 2, 2.0)
    _store(features, "P2-HE", 4, 3.0)
    bags = read_bags(features, cohort.patients, slides=cohort.slide_ids())
    assert bags["P1"].shape == (5, 4) and bags["P2"].shape == (4, 4)
    np.testing.assert_array_equal(bags["P1"][:, 0], [1, 1, 1, 2, 2])
    tiles = read_patient_tiles(features, "P1", ["P1", "P1.2"])
    assert list(tiles.slide_ids) == ["P1"] * 3 + ["P1.2"] * 2
    np.testing.assert_array_equal(tiles.coords[3:, 0], [0, 224])  # each slide's own frame
    # a subset draws from the pooled tiles, the same way for the bag and its positions
    sub = read_patient_tiles(features, "P1", ["P1", "P1.2"], max_tiles=3, seed=1)
    assert len(sub.features) == 3
    np.testing.assert_array_equal(
        read_bags(features, ["P1"], 3, 1, cohort.slide_ids())["P1"], sub.features
    )


def test_a_missing_slide_store_leaves_the_others_and_widths_must_agree(tmp_path):
    features = tmp_path / "features"
    features.mkdir()
    _store(features, "P1", 3, 1.0)
    assert len(read_patient_tiles(features, "P1", ["P1", "P1.2"]).features) == 3
    _store(features, "P1.2", 2, 2.0, width=8)
    with pytest.raises(ValueError, match="different feature widths"):
        read_patient_tiles(features, "P1", ["P1", "P1.2"])


def test_single_slide_cohorts_keep_the_patient_id_as_slide_id(tmp_path):
    cohort = load_manifest(_manifest(tmp_path, "P1,S1,a.tiff,,,50,10,1\nP2,S1,,,,51,3,0\n"))
    assert cohort.slide_ids() == {"P1": ["P1"]}
    assert list(cohort.slides.columns) == ["patient_id", "slide_id", "path", "mpp", "annotations"]
    assert isinstance(cohort.slides, pd.DataFrame)


def _attention_tiles():
    """Patient P1 with two slides whose tiles share coordinates, P2 with one (no slide_id)."""
    rows = []
    for pid, sid, n in (("P1", "P1", 3), ("P1", "P1.2", 2), ("P2", "P2", 2)):
        for i in range(n):
            rows.append(
                {"patient_id": pid, "slide_id": sid, "model": "fusion", "target": "ers_caf",
                 "x": 224.0 * i, "y": 0.0, "tile_px": 224.0, "attention": 1.0 / 7}
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_attention_tiles_of_two_slides_may_share_coordinates():
    from stromalens.evaluation.attention import check_tiles

    tiles = check_tiles(_attention_tiles())
    assert tiles.groupby("slide_id").size().to_dict() == {"P1": 3, "P1.2": 2, "P2": 2}
    # without a slide_id column every tile is on the slide named after its patient
    plain = check_tiles(_attention_tiles().drop(columns="slide_id").iloc[5:])
    assert list(plain["slide_id"]) == ["P2", "P2"]


def test_attention_geojson_one_file_per_slide_in_its_own_coordinates(tmp_path):
    import json

    from stromalens.evaluation.overlays import save_attention_geojson

    written = save_attention_geojson(_attention_tiles(), tmp_path, "fusion")
    assert sorted(p.name for p in written) == ["P1.2.geojson", "P1.geojson", "P2.geojson"]
    second = json.loads((tmp_path / "P1.2.geojson").read_text())
    rings = [f["geometry"]["coordinates"][0][0] for f in second["features"]]
    assert sorted(rings) == [[0.0, 0.0], [224.0, 0.0]]
