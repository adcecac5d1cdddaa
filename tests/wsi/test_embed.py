import json
import os

import numpy as np
import pytest

from stromalens.wsi.embed import EmbedSettings, SlideJob, embed_cohort, embed_slide
from stromalens.wsi.store import (
    SlideFeatures,
    feature_dir,
    feature_path,
    is_complete,
    read_slide,
    write_slide,
)

from .conftest import REAL_SLIDE, needs_real_data

REQUIRED_ATTRS = (
    "mpp",
    "target_mpp",
    "tile_px",
    "encoder",
    "weights_sha256",
    "stain",
    "stromalens_version",
)


def test_one_slide_store_layout(tmp_path, synthetic_slides, random_synthclip):
    out = tmp_path / "s.h5"
    summary = embed_slide(synthetic_slides[0], out, random_synthclip, EmbedSettings(num_workers=0))
    assert summary["status"] == "done" and summary["n_tiles"] > 0
    data = read_slide(out)
    assert data.coords.shape == (summary["n_tiles"], 2)
    assert data.features.shape == (summary["n_tiles"], random_synthclip.embed_dim)
    for key in REQUIRED_ATTRS:
        assert key in data.attrs, key
    assert data.attrs["stain"]["method"] == "macenko"
    assert data.attrs["weights_sha256"] == "random"
    kept = data.qc["kept"]
    assert np.array_equal(data.qc["coords"][kept], data.coords)
    assert set(data.qc) >= {"tissue", "blur", "pen", "black", "white", "kept", "coords"}
    geo = json.loads(out.with_suffix(".geojson").read_text())
    assert geo["type"] == "FeatureCollection"
    kinds = {f["properties"]["classification"]["name"] for f in geo["features"]}
    assert {"Tissue", "Tile kept"} <= kinds
    assert out.with_suffix(".qc.png").is_file()


def test_features_do_not_depend_on_worker_count(tmp_path, synthetic_slides, random_synthclip):
    a = embed_slide(
        synthetic_slides[1],
        tmp_path / "a.h5",
        random_synthclip,
        EmbedSettings(num_workers=0, batch_size=7, export=False),
    )
    b = embed_slide(
        synthetic_slides[1],
        tmp_path / "b.h5",
        random_synthclip,
        EmbedSettings(num_workers=2, batch_size=16, export=False),
    )
    fa, fb = read_slide(a["path"]), read_slide(b["path"])
    assert np.array_equal(fa.coords, fb.coords)
    assert np.allclose(fa.features, fb.features, atol=1e-4)


def test_cohort_is_resumable_and_isolates_bad_slides(
    tmp_path, synthetic_slides, broken_slides, random_synthclip
):
    jobs = [
        SlideJob("good", broken_slides["good"]),
        SlideJob("truncated", broken_slides["truncated"]),
        SlideJob("no_mpp", broken_slides["no_mpp"]),
        SlideJob("no_mpp_override", broken_slides["no_mpp"], mpp=0.5),
        SlideJob("empty", broken_slides["empty"]),
    ]
    settings = EmbedSettings(num_workers=0, export=False)
    leaf = feature_dir(tmp_path, "synthclip", settings.tiling)
    results = {
        r["slide"]: r
        for r in embed_cohort(jobs, tmp_path, "synthclip", "random", settings, progress=False)
    }
    assert results["good"]["status"] == "done"
    assert results["no_mpp_override"]["status"] == "done"
    assert results["truncated"]["status"] == "failed"
    assert results["no_mpp"]["status"] == "failed" and "µm/px" in results["no_mpp"]["error"]
    assert results["empty"]["status"] == "empty"
    assert read_slide(feature_path(leaf, "empty")).coords.shape == (0, 2)
    run = json.loads((leaf / "run.json").read_text())
    assert len(run["slides"]) == 5
    # A killed run leaves a .partial file and no final store: the re-run redoes that slide only.
    os.remove(feature_path(leaf, "no_mpp_override"))
    (leaf / "no_mpp_override.h5.partial").write_bytes(b"half a file")
    again = {
        r["slide"]: r
        for r in embed_cohort(jobs, tmp_path, "synthclip", "random", settings, progress=False)
    }
    assert again["good"]["status"] == "skipped"
    assert again["no_mpp_override"]["status"] == "done"
    assert is_complete(feature_path(leaf, "no_mpp_override"), require_features=True)


def test_corrupt_store_is_not_complete(tmp_path):
    path = tmp_path / "x.h5"
    path.write_bytes(b"not hdf5")
    assert not is_complete(path)
    write_slide(path, SlideFeatures(np.zeros((0, 2)), None, {}, {"mpp": 0.5}))
    assert is_complete(path) and not is_complete(path, require_features=True)


def test_tile_only_and_process_executor(tmp_path, synthetic_slides):
    jobs = [SlideJob(p.stem, p) for p in synthetic_slides[:2]]
    results = embed_cohort(
        jobs,
        tmp_path,
        None,
        settings=EmbedSettings(export=False),
        executor="process",
        workers=2,
        progress=False,
    )
    assert [r["status"] for r in results] == ["done", "done"]
    tiles = feature_dir(tmp_path, None, EmbedSettings().tiling)
    assert tiles.parent.name == "tiles"
    data = read_slide(feature_path(tiles, jobs[0].slide_id))
    assert data.features is None and data.attrs["encoder"] == "none"


def test_bad_settings_name_the_value():
    with pytest.raises(ValueError, match="reinhard"):
        EmbedSettings(stain="reinhard")
    with pytest.raises(ValueError, match="executor"):
        embed_cohort([], "/tmp/never", executor="dask")


@needs_real_data
def test_real_slide_end_to_end(tmp_path, random_synthclip):
    summary = embed_slide(
        REAL_SLIDE,
        tmp_path / "cmu.h5",
        random_synthclip,
        EmbedSettings(num_workers=0, export=False),
    )
    assert summary["status"] == "done" and summary["n_tiles"] > 25
    data = read_slide(tmp_path / "cmu.h5")
    assert data.attrs["mpp"] == pytest.approx(0.499)
    assert np.isfinite(data.features).all()
