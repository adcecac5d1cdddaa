"""The trained model travels on its own: ``stromalens predict --model BUNDLE`` needs nothing of
the training cohort, and refuses features that were made otherwise with one clear message."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from stromalens.evaluation import predict_cohort
from stromalens.rundir import RunFiles
from stromalens.training.bundle import BUNDLE_VERSION, BundleError, load_bundle

SCRIPT = Path(sys.executable).parent / "stromalens"


@pytest.fixture(scope="module")
def moved(tiny_run, tmp_path_factory):
    """A private copy of the tiny study; its bundle's predictions of an 'external' cohort (a
    copy of the development cohort's manifest and slide features); then the bundle and that
    cohort moved to a new folder and the whole study copy — training cohort, targets,
    radiomics, features and run directory — deleted."""
    root = tmp_path_factory.mktemp("bundle")
    study = root / "study"
    shutil.copytree(tiny_run.parent, study)
    train = study / tiny_run.name
    run = RunFiles.read(train)
    external = root / "elsewhere" / "cohort"
    external.mkdir(parents=True)
    manifest = external / "cohort.csv"
    shutil.copy2(study / "cohort.csv", manifest)
    # the run's config.yaml names absolute paths of the fixture's study: map them to the copy
    features = study / Path(run.training["features"]).relative_to(tiny_run.parent)
    shutil.copytree(features, external / "features")
    stored = predict_cohort(
        train, manifest, root / "stored", features_dir=external / "features", name="ext"
    )
    bundle = root / "elsewhere" / "model"
    shutil.copytree(train / "model", bundle)
    shutil.rmtree(study)
    return bundle, manifest, external / "features", stored, root


def _predict(bundle, manifest, features, out) -> subprocess.CompletedProcess:
    args = ["predict", "--model", str(bundle), "--manifest", str(manifest)]
    args += ["--features", str(features), "--out", str(out)]
    return subprocess.run([str(SCRIPT), *args], capture_output=True, encoding="utf-8")


def test_a_moved_bundle_predicts_exactly_what_it_predicted_beside_its_training_run(moved):
    bundle, manifest, features, stored, root = moved
    done = _predict(bundle, manifest, features, root / "again")
    assert done.returncode == 0, done.stderr
    again = pd.read_parquet(root / "again" / "predictions.parquet")
    pd.testing.assert_frame_equal(again, stored)  # exactly: same bits
    info = json.loads((root / "again" / "predict.json").read_text(encoding="utf-8"))
    assert info["folds_averaged"] == 3 and "fusion" in info["models"]
    assert "mri" not in info["models"]  # no MRI-only model on a WSI-only cohort


def test_the_bundle_holds_its_contract_prompts_and_fitted_preprocessing(moved):
    bundle = load_bundle(moved[0])
    assert bundle.meta["bundle_version"] == BUNDLE_VERSION
    assert bundle.contract.encoder == "synthclip" and bundle.contract.feature_dim > 0
    assert bundle.prompts.shape[0] == 3 and set(bundle.prompt_text) == {
        "ers_caf",
        "lr",
        "heterogeneity",
    }
    assert all(hasattr(f.prep, "target_scaler_") and f.has("fusion") for f in bundle.folds)


def test_features_of_another_encoder_are_one_clear_error(moved):
    import h5py

    bundle, manifest, features, _, root = moved
    other = root / "other_features"
    shutil.copytree(features, other)
    first = sorted(other.glob("*.h5"))[0]
    with h5py.File(first, "a") as h5:
        h5.attrs["encoder"] = "uni"
    done = _predict(bundle, manifest, other, root / "refused")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    message = " ".join(done.stderr.split())
    assert "encoder: synthclip (model) vs uni (features)" in message
    assert first.name in message
    assert not (root / "refused" / "predictions.parquet").exists()


def test_a_folder_without_a_bundle_is_refused(tmp_path):
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path)
