"""The feature store: the path scheme, the identity that decides reuse (a replaced slide, another
encoder, weights, tiling or stain settings are recomputed and logged; an unchanged slide is
skipped), the TRIDENT/CLAM attributes on our files, and TRIDENT, CLAM and STAMP files read as
input.

The foreign files are written with h5py as those tools lay them out (names read from TRIDENT's
``trident/IO.py`` ``coords_to_h5`` and ``wsi_objects/WSI.py`` ``extract_patch_features``, CLAM's
``wsi_core/WholeSlideImage.py`` ``process_contour`` and ``extract_features_fp.py``, STAMP's
``stamp/preprocessing/__init__.py`` ``extract_``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil

import h5py
import numpy as np
import pytest

from stromalens.training.bundle import FeatureContract
from stromalens.training.data import read_bags
from stromalens.wsi.embed import EmbedSettings, SlideJob, embed_cohort, embed_slide
from stromalens.wsi.store import (
    SlideFeatures,
    feature_dir,
    feature_path,
    is_complete,
    read_attrs,
    read_slide,
    slide_identity,
    store_matches,
    tiling_name,
    write_slide,
)
from stromalens.wsi.tiling import TilingSpec

FAST = EmbedSettings(num_workers=0, export=False)


def _stale_reasons(caplog) -> dict[str, str]:
    return {
        r.fields["slide"]: r.fields["reason"]
        for r in caplog.records
        if r.getMessage() == "stale store recomputed"
    }


# ---------------------------------------------------------------------------- paths
def test_the_tiling_folder_names_mpp_tile_and_overlap():
    assert tiling_name(TilingSpec()) == "0.5mpp_224px_0px_overlap"
    assert tiling_name(TilingSpec(target_mpp=0.2527, tile_px=256, stride_px=192)) == (
        "0.2527mpp_256px_64px_overlap"
    )
    assert tiling_name(TilingSpec(target_mpp=1.0, stride_px=256)) == "1mpp_224px_32px_gap"
    names = {
        tiling_name(TilingSpec(**kw))
        for kw in ({}, {"target_mpp": 0.25}, {"tile_px": 256, "stride_px": 256}, {"stride_px": 112})
    }
    assert len(names) == 4
    # QC settings are not in the name (the identity checks them)
    assert tiling_name(TilingSpec(min_tissue=0.2)) == tiling_name(TilingSpec())


def test_feature_dir_is_encoder_then_tiling(tmp_path):
    spec = TilingSpec()
    assert feature_dir(tmp_path, "uni2-h", spec) == tmp_path / "uni2-h" / tiling_name(spec)
    assert feature_dir(tmp_path, None, spec).parent.name == "tiles"
    assert feature_dir(tmp_path, "hf-hub:org/model", spec).parent.name == "hf-hub_org_model"
    with pytest.raises(ValueError, match="folder name"):
        feature_dir(tmp_path, "..", spec)


def test_slide_identity_reads_two_mebibytes_at_most(tmp_path):
    path = tmp_path / "big.bin"
    data = bytearray(os.urandom(3 << 20))
    path.write_bytes(bytes(data))
    first = slide_identity(path)
    assert first["slide_path"] == str(path.resolve()) and first["slide_size"] == 3 << 20
    stat = path.stat()
    data[(3 << 20) // 2] ^= 0xFF  # a byte in the unhashed middle, same size and time: same
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert slide_identity(path) == first
    data[-1] ^= 0xFF  # the last MiB is hashed
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert slide_identity(path)["slide_sha256_partial"] != first["slide_sha256_partial"]


# ---------------------------------------------------------------------------- stale stores
def test_a_replaced_slide_is_recomputed_and_the_others_skipped(tmp_path, synthetic_slides, caplog):
    slides = tmp_path / "slides"
    slides.mkdir()
    a, b = slides / "A.tiff", slides / "B.tiff"
    shutil.copy(synthetic_slides[0], a)
    shutil.copy(synthetic_slides[1], b)
    jobs = [SlideJob("A", a), SlideJob("B", b)]
    out = tmp_path / "features"
    leaf = feature_dir(out, "synthclip", FAST.tiling)

    def run():
        results = embed_cohort(jobs, out, "synthclip", "random", FAST, progress=False)
        return {r["slide"]: r for r in results}

    assert {r["status"] for r in run().values()} == {"done"}
    assert {r["status"] for r in run().values()} == {"skipped"}  # unchanged: reused
    shutil.copy(synthetic_slides[2], a)  # the patient's slide is now another file
    caplog.set_level(logging.INFO, logger="stromalens")
    caplog.clear()
    third = run()
    assert third["A"]["status"] == "done" and third["B"]["status"] == "skipped"
    assert "slide_sha256_partial differs" in third["A"]["recomputed"]
    assert "slide_sha256_partial differs" in _stale_reasons(caplog)["A"]
    stored = read_slide(feature_path(leaf, "A"))
    assert {k: stored.attrs[k] for k in slide_identity(a)} == slide_identity(a)
    fresh = embed_slide(synthetic_slides[2], tmp_path / "fresh.h5", None, FAST)
    assert len(stored.coords) == fresh["n_tiles"]
    # touching the file (same bytes, new modification time) also makes the store stale
    os.utime(b)
    assert "slide_mtime_ns differs" in run()["B"]["recomputed"]


def test_another_encoder_or_weights_is_recomputed(tmp_path, synthetic_slides, random_synthclip):
    slide, out = synthetic_slides[0], tmp_path / "s.h5"
    assert embed_slide(slide, out, random_synthclip, FAST)["status"] == "done"
    assert embed_slide(slide, out, random_synthclip, FAST)["status"] == "skipped"
    retrained = dataclasses.replace(random_synthclip, weights_sha256="3f" * 32)
    again = embed_slide(slide, out, retrained, FAST)
    assert again["status"] == "done" and "weights_sha256 differs" in again["recomputed"]
    assert read_attrs(out)[0]["weights_sha256"] == "3f" * 32
    other = dataclasses.replace(random_synthclip, name="openclip-vit-b-32")
    assert "encoder differs" in embed_slide(slide, out, other, FAST)["recomputed"]
    assert embed_slide(slide, out, other, FAST)["status"] == "skipped"


def test_another_encoder_writes_to_its_own_folder(tmp_path, synthetic_slides):
    jobs = [SlideJob("P", synthetic_slides[0])]
    embed_cohort(jobs, tmp_path, "synthclip", "random", FAST, progress=False)
    tiles = embed_cohort(jobs, tmp_path, None, settings=FAST, progress=False)
    assert tiles[0]["status"] == "done"  # not the synthclip store
    assert is_complete(feature_path(feature_dir(tmp_path, "synthclip", FAST.tiling), "P"), True)
    assert read_slide(feature_path(feature_dir(tmp_path, None, FAST.tiling), "P")).features is None


def test_another_tiling_or_stain_setting_is_recomputed(tmp_path, synthetic_slides, caplog):
    jobs = [SlideJob("P", synthetic_slides[0])]
    embed_cohort(jobs, tmp_path, "synthclip", "random", FAST, progress=False)
    leaf = feature_dir(tmp_path, "synthclip", FAST.tiling)
    qc = dataclasses.replace(FAST, tiling=TilingSpec(min_tissue=0.3))  # same folder
    caplog.set_level(logging.INFO, logger="stromalens")
    caplog.clear()
    done = embed_cohort(jobs, tmp_path, "synthclip", "random", qc, progress=False)[0]
    assert "tiling differs (min_tissue: 0.5 → 0.3)" in done["recomputed"]
    assert _stale_reasons(caplog) == {"P": done["recomputed"]}
    stain = dataclasses.replace(qc, stain="none")
    done = embed_cohort(jobs, tmp_path, "synthclip", "random", stain, progress=False)[0]
    assert "stain_settings differs" in done["recomputed"]
    assert read_slide(feature_path(leaf, "P")).attrs["stain"] == {"method": "none"}
    # tile size or µm/px: another folder, the first store is left as it was
    bigger = dataclasses.replace(FAST, tiling=TilingSpec(tile_px=256, stride_px=256))
    done = embed_cohort(jobs, tmp_path, "synthclip", "random", bigger, progress=False)[0]
    assert done["status"] == "done" and "recomputed" not in done
    assert read_slide(done["path"]).attrs["tile_px"] == 256
    assert read_slide(feature_path(leaf, "P")).attrs["tile_px"] == 224


def test_a_store_without_identity_is_stale_and_overwrite_recomputes(tmp_path, synthetic_slides):
    slide, out = synthetic_slides[0], tmp_path / "old.h5"
    write_slide(out, SlideFeatures(np.zeros((1, 2)), np.zeros((1, 4)), {}, {"encoder": "none"}))
    summary = embed_slide(slide, out, None, FAST)
    assert summary["status"] == "done" and "recorded" in summary["recomputed"]
    assert embed_slide(slide, out, None, FAST)["status"] == "skipped"
    forced = embed_slide(slide, out, None, dataclasses.replace(FAST, overwrite=True))
    assert forced["status"] == "done" and "recomputed" not in forced


def test_store_matches_names_every_difference(tmp_path):
    path = tmp_path / "s.h5"
    write_slide(
        path, SlideFeatures(np.zeros((0, 2)), None, {}, {"encoder": "a", "tiling": {"x": 1}})
    )
    assert store_matches(path, {"encoder": "a", "tiling": {"x": 1}}) is None
    reason = store_matches(path, {"encoder": "b", "tiling": {"x": 2}})
    assert reason == "encoder differs (a → b); tiling differs (x: 1 → 2)"
    assert "no weights_sha256 recorded" in store_matches(path, {"weights_sha256": "f"})
    path.write_bytes(b"not hdf5")
    assert store_matches(path, {"encoder": "a"}).startswith("unreadable store")


# ---------------------------------------------------------------------------- our files for them
def test_our_coords_carry_trident_and_clam_attributes(tmp_path, synthetic_slides):
    for spec in (TilingSpec(), TilingSpec(target_mpp=0.8)):  # read directly / resampled
        settings = dataclasses.replace(FAST, tiling=spec)
        out = tmp_path / f"{tiling_name(spec)}.h5"
        embed_slide(synthetic_slides[0], out, None, settings)
        with h5py.File(out, "r") as h5:
            coords = dict(h5["coords"].attrs)  # what TRIDENT's read_coords returns
        root = read_attrs(out)[0]
        # TRIDENT needs these three (extract_patch_features, visualize_coords) …
        for key in ("patch_size", "level0_magnification", "target_magnification"):
            assert coords[key] is not None, key
        # … TITAN and TRIDENT's slide encoders read patch_size_level0, CLAM patch_level/size
        assert coords["patch_size_level0"] == round(root["tile_level0_px"])
        assert coords["patch_size"] == root["read_px"] and coords["patch_level"] == root["level"]
        ratio = coords["level0_magnification"] / coords["target_magnification"]
        assert coords["patch_size"] * ratio == pytest.approx(coords["patch_size_level0"], abs=0.5)
        assert coords["level0_magnification"] == pytest.approx(10 / root["mpp"])
        assert np.allclose(coords["downsample"], root["tile_level0_px"] / root["read_px"])
        assert coords["overlap"] == 0 and coords["name"] == out.stem
        assert [coords["level0_width"], coords["level0_height"]] == list(root["dimensions"])
        assert list(coords["level_dim"]) == list(root["level_dim"])
    assert root["read_px"] != root["tile_px"]  # the second tiling was resampled


# ---------------------------------------------------------------------------- their files for us
def _trident_file(folder, name, n=6, dim=1024):
    """TRIDENT's patch features: ``<job>/20x_224px_0px_overlap/features_<encoder>/<slide>.h5``,
    ``features`` and ``coords``, the coords attributes of ``coords_to_h5``."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    features = rng.normal(size=(n, dim)).astype(np.float32)
    with h5py.File(folder / f"{name}.h5", "w") as h5:
        h5.create_dataset("features", data=features)
        h5["features"].attrs.update({"name": name, "savetodir": str(folder)})
        coords = h5.create_dataset("coords", data=rng.integers(0, 9000, (n, 2)))
        coords.attrs.update(
            {
                "patch_size": 224,
                "patch_size_level0": 448,
                "level0_magnification": 40,
                "target_magnification": 20,
                "overlap": 0,
                "name": name,
                "savetodir": str(folder.parent),
                "level0_width": 9000,
                "level0_height": 9000,
            }
        )
    return features


def test_trident_features_are_read_for_training_and_prediction(tmp_path):
    folder = tmp_path / "job" / "20x_224px_0px_overlap" / "features_uni_v1"
    features = _trident_file(folder, "P1")
    path = folder / "P1.h5"
    assert is_complete(path, require_features=True)
    slide = read_slide(path)
    assert np.array_equal(slide.features, features)
    attrs = slide.attrs
    assert attrs["format"] == "trident" and attrs["encoder"] == "trident:uni_v1"
    assert attrs["target_mpp"] == pytest.approx(0.5) and attrs["tile_px"] == 224
    assert attrs["tile_level0_px"] == 448 and attrs["stride_px"] == 224
    assert attrs["slide_id"] == "P1"
    bags = read_bags(folder, ["P1", "P2"])
    assert list(bags) == ["P1"] and bags["P1"].shape == (6, 1024)
    contract = FeatureContract.of_store(*read_attrs(path))
    assert contract == FeatureContract("trident:uni_v1", None, 1024, 0.5, 224)
    ours = FeatureContract("uni", "ab" * 32, 1024, 0.5, 224)
    assert ours.differences(contract) == ["encoder: uni (model) vs trident:uni_v1 (features)"]


def test_clam_features_are_read_with_or_without_patch_attributes(tmp_path):
    rng = np.random.default_rng(1)
    bare = rng.normal(size=(5, 512)).astype(np.float32)
    # extract_features_fp.py: save_hdf5(features, coords (int32)), no attributes
    with h5py.File(tmp_path / "P1.h5", "w") as h5:
        h5.create_dataset("features", data=bare, maxshape=(None, 512), chunks=(1, 512))
        h5.create_dataset("coords", data=rng.integers(0, 5000, (5, 2)).astype(np.int32))
    # the patching step's coords attributes (process_contour), level 1 of a 4× pyramid
    with h5py.File(tmp_path / "P2.h5", "w") as h5:
        h5.create_dataset("features", data=bare[:3])
        coords = h5.create_dataset("coords", data=np.zeros((3, 2), np.int64))
        coords.attrs.update(
            {
                "patch_size": 256,
                "patch_level": 1,
                "downsample": (4.0, 4.0),
                "downsampled_level_dim": (2500, 2000),
                "level_dim": (2500, 2000),
                "name": "P2",
                "save_path": str(tmp_path),
            }
        )
    first, second = read_slide(tmp_path / "P1.h5"), read_slide(tmp_path / "P2.h5")
    assert first.attrs["format"] == "clam" and np.array_equal(first.features, bare)
    assert "encoder" not in first.attrs and "target_mpp" not in first.attrs
    assert second.attrs["level"] == 1 and second.attrs["read_px"] == 256
    assert second.attrs["tile_level0_px"] == 1024
    bags = read_bags(tmp_path, ["P1", "P2"])
    assert {k: v.shape for k, v in bags.items()} == {"P1": (5, 512), "P2": (3, 512)}
    # only the width is known, so only the width is checked
    contract = FeatureContract.of_store(*read_attrs(tmp_path / "P1.h5"))
    assert contract == FeatureContract(None, None, 512, None, None)
    assert FeatureContract("uni", "ab", 512, 0.5, 224).differences(contract) == []
    assert FeatureContract("uni", "ab", 1024, 0.5, 224).differences(contract) == [
        "feature_dim: 1024 (model) vs 512 (features)"
    ]


def test_stamp_features_are_read(tmp_path):
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(4, 1024)).astype(np.float16)
    coords_um = rng.uniform(0, 20000, (4, 2)).astype(np.float32)
    with h5py.File(tmp_path / "P1.h5", "w") as h5:
        h5["coords"] = coords_um
        h5["feats"] = feats
        h5.attrs["stamp_version"] = "2.3.0"
        h5.attrs["extractor"] = "mahmood-uni"
        h5.attrs["unit"] = "um"
        h5.attrs["tile_size_um"] = 256.0
        h5.attrs["tile_size_px"] = 224
        h5.attrs["code_hash"] = "0a1b2c3d"
        h5.attrs["feat_type"] = "tile"
    assert is_complete(tmp_path / "P1.h5", require_features=True)
    slide = read_slide(tmp_path / "P1.h5")
    assert slide.attrs["format"] == "stamp" and slide.attrs["encoder"] == "stamp:mahmood-uni"
    assert slide.attrs["coords_unit"] == "um" and np.array_equal(slide.coords, coords_um)
    assert slide.attrs["target_mpp"] == pytest.approx(256 / 224)
    bags = read_bags(tmp_path, ["P1"])
    assert bags["P1"].dtype == np.float32
    assert np.array_equal(bags["P1"], feats.astype(np.float32))
    contract = FeatureContract.of_store(*read_attrs(tmp_path / "P1.h5"))
    assert contract == FeatureContract("stamp:mahmood-uni", None, 1024, 256 / 224, 224)


def test_the_writing_version_and_device_are_provenance_not_identity(tmp_path, synthetic_slides):
    """A store written by another stromalens version (or on another device) is reused: the
    version is recorded for provenance and never makes a store stale (store.py says why)."""
    from stromalens import __version__
    from stromalens.wsi.store import PROVENANCE_KEYS

    slide, out = synthetic_slides[0], tmp_path / "s.h5"
    assert embed_slide(slide, out, None, FAST)["status"] == "done"
    attrs = read_attrs(out)[0]
    assert attrs["stromalens_version"] == __version__ and attrs["device"] == "cpu"
    assert attrs["stain_on_device"] is False
    with h5py.File(out, "a") as h5:
        h5.attrs["stromalens_version"] = "0.0.1"
        h5.attrs["device"] = "cuda:3"
    assert embed_slide(slide, out, None, FAST)["status"] == "skipped"
    assert read_attrs(out)[0]["stromalens_version"] == "0.0.1"  # left as it was
    asked = {key: "something else" for key in PROVENANCE_KEYS}
    assert store_matches(out, {**asked, "encoder": "none"}) is None
