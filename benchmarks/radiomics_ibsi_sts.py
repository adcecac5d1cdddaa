"""Real clinical geometry: 10 IBSI soft-tissue-sarcoma patients × (MR T1, CT, PET), two ways.

    python benchmarks/radiomics_ibsi_sts.py [--data ../shared/data/radiology/ibsi_sts]
        [--out /tmp/ibsi_sts] [--workers 2]

Each modality has its own GTV mask on its own grid (STS_007 and STS_009 miss one modality).
Measured in this one run:

1. **own masks** — every modality with its own mask (manifest columns ``<image>_mask``);
2. **moved masks** — CT and PET without masks, ``mask_from: t1``: registered onto the MR
   (rigid, Mattes MI) and the MR mask moved; and the same with ``registration.method: none``
   (the IBSI images share one frame of reference, so resampling alone should be right);
3. the **Dice** between each moved mask and the modality's own mask (on the modality's grid);
4. the **feature agreement** between ways 1 and 2 per feature class (median over features of
   ICC(A,1) across patients, two "raters", and of the relative difference |a − b| / mean(|a|, |b|));
5. the **overhead** of stromalens's per-sequence feature step (read, mask check, crop, 1 mm
   resampling, PyRadiomics) over PyRadiomics' own ``execute(image, mask)`` with its own 1 mm
   resampling and the same feature settings, per case, side by side (median ratio);
6. the **scaling** of way 1 over 1 and ``--workers`` processes (wall time ratio);
7. **normalisation**: on the 9 MR T1s, how many of the 18 first-order features are stable
   (perturbation ICC(1,1) ≥ 0.75, 5 perturbations per patient) under z-normalisation over the
   tumour (``region: roi``) vs the body (``body``); a feature the normalisation makes (nearly)
   the same for every patient has no between-patient variance and a low ICC.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from stromalens.config import validate_settings
from stromalens.radiology.runner import run_radiomics
from stromalens.radiology.settings import RadiomicsConfig

MODALITIES = {"t1": "MR_T1", "ct": "CT", "pet": "PET"}
COLUMNS = {"t1": "mri_t1", "ct": "ct", "pet": "pet"}
CLASSES = ("firstorder", "shape", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
#: Per-modality settings. The IBSI MRs are N4-corrected and fat-normalised already (README),
#: CT is in HU and PET in SUV: none is bias-corrected or z-normalised again.
SETTINGS = {
    "t1": {"setting": {"binCount": 32}},
    "ct": {"setting": {"binWidth": 25}},
    "pet": {"setting": {"binWidth": 0.5}},
}


def config_for(way: str, registration: str = "rigid") -> RadiomicsConfig:
    sequences = []
    for name, column in COLUMNS.items():
        spec = {"name": name, "image": column, "n4": False, "normalise": False}
        spec |= SETTINGS[name]
        if way == "moved" and name != "t1":
            spec["mask_from"] = "t1"
        sequences.append(spec)
    return validate_settings(
        RadiomicsConfig,
        {
            "sequences": sequences,
            "preprocess": {
                "crop_margin_mm": 10,
                "mask_mismatch": "error",
                "registration": {"method": registration},
            },
            "extraction": {
                "imageType": {"Original": {}},
                "featureClass": {c: [] for c in CLASSES},
                "setting": {"binCount": 32, "padDistance": 5},
            },
            "stability": {"enabled": False},
            "harmonisation_check": {"enabled": False},
        },
        source=f"benchmark ({way})",
    )


def write_manifest(data: Path, folder: Path, *, own_masks: bool) -> Path:
    rows = []
    for patient in sorted(p for p in data.glob("STS_*") if p.is_dir()):
        row = {"patient_id": patient.name, "site": "IBSI"}
        has_mr = (patient / "MR_T1_image.nii.gz").exists()
        for name, prefix in MODALITIES.items():
            image = patient / f"{prefix}_image.nii.gz"
            # way 2 moves the MR mask: without an MR (STS_009) there is none to move
            present = image.exists() and (own_masks or has_mr)
            row[COLUMNS[name]] = str(image) if present else ""
            if own_masks or name == "t1":
                mask = patient / f"{prefix}_mask.nii.gz"
                row[COLUMNS[name] + "_mask"] = str(mask) if present else ""
        rows.append(row)
    path = folder / ("own.csv" if own_masks else "moved.csv")
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def timed_run(manifest, out, config, workers) -> tuple[pd.DataFrame, float]:
    started = time.perf_counter()
    run_radiomics(manifest, out, config, workers=workers, progress=False, check=False)
    return pd.read_parquet(out / "radiomics.parquet"), time.perf_counter() - started


def dice_table(data: Path, config: RadiomicsConfig) -> pd.DataFrame:
    """Dice of the moved MR mask vs each CT / PET own mask, registered as the runner does."""
    import SimpleITK as sitk

    from stromalens.radiology import io, registration

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # as in the runner's workers
    reg = config.preprocess.registration
    rows = []
    for patient in sorted(p for p in data.glob("STS_*") if p.is_dir()):
        mr_path = patient / "MR_T1_image.nii.gz"
        if not mr_path.exists():
            continue
        mr = io.read_image(mr_path)
        mr_mask = io.read_mask(patient / "MR_T1_mask.nii.gz", mr) > 0
        for name in ("ct", "pet"):
            path = patient / f"{MODALITIES[name]}_image.nii.gz"
            if not path.exists():
                continue
            image = io.read_image(path)
            own = io.read_mask(patient / f"{MODALITIES[name]}_mask.nii.gz", image) > 0
            t0 = time.perf_counter()
            result = registration.register(mr, image, reg, fixed_mask=mr_mask)
            moved, inside = registration.move_mask(mr_mask, image, result.transform)
            shift = registration.centroid_shift(mr_mask, result.transform, result.start)
            rows.append(
                {
                    "patient": patient.name,
                    "modality": name,
                    "method": reg.method,
                    "dice": registration.dice(moved, own),
                    "inside": inside,
                    "shift_mm": shift,
                    "seconds": time.perf_counter() - t0,
                }
                | result.qc()
            )
    return pd.DataFrame(rows)


def agreement(own: pd.DataFrame, moved: pd.DataFrame) -> pd.DataFrame:
    """Per modality and feature class: median ICC(A,1) and median relative difference."""
    from stromalens.radiology.stability import icc

    rows = []
    for name in ("ct", "pet"):
        columns = [c for c in own.columns if c.startswith(f"{name}__") and c in moved.columns]
        both = own[columns].notna().all(axis=1) & moved[columns].notna().all(axis=1)
        a, b = own.loc[both, columns], moved.loc[both, columns]
        for cls in CLASSES:
            cols = [c for c in columns if f"_{cls}_" in c]
            if not cols:
                continue
            if both.sum() < 2:
                continue
            x, y = a[cols].to_numpy(), b[cols].to_numpy()
            values = np.stack([x, y], axis=1)  # (patients, 2 ways, features)
            keep = values.std(axis=(0, 1)) > 0
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = np.abs(x - y) / ((np.abs(x) + np.abs(y)) / 2)
            rows.append(
                {
                    "modality": name,
                    "class": cls,
                    "features": len(cols),
                    "patients": int(both.sum()),
                    "median_icc": float(np.nanmedian(icc(values[:, :, keep], "ICC(A,1)")["icc"])),
                    "median_rel_diff": float(np.nanmedian(np.where(np.isfinite(rel), rel, 0))),
                }
            )
    return pd.DataFrame(rows)


def overhead(data: Path, config: RadiomicsConfig, repeats: int = 3) -> pd.DataFrame:
    """Per case: stromalens's feature step vs PyRadiomics' execute() on the files, same
    process, same settings (1 mm B-spline resampling, the same classes, the same context: a
    crop margin of padDistance × 1 mm, as PyRadiomics pads its resampled box), each the
    fastest of ``repeats`` alternating runs (the machine is shared)."""
    import SimpleITK as sitk

    from stromalens.radiology import features as feat
    from stromalens.radiology import io, preprocess
    from stromalens.radiology.runner import _read_mask

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    specs = {s.name: s for s in config.sequences}
    pad = float(config.extraction.setting.get("padDistance", 5))
    pre = config.preprocess.model_copy(update={"crop_margin_mm": pad})
    rows = []
    for patient in sorted(p for p in data.glob("STS_*") if p.is_dir()):
        for name, prefix in MODALITIES.items():
            image_path = patient / f"{prefix}_image.nii.gz"
            if not image_path.exists():
                continue
            mask_path = patient / f"{prefix}_mask.nii.gz"
            params = config.extraction.pyradiomics_params(specs[name].setting)
            direct_params = params | {
                "setting": params["setting"]
                | {"resampledPixelSpacing": [1.0, 1.0, 1.0], "interpolator": "sitkBSpline"}
            }
            direct = feat.make_extractor(direct_params)
            ours = feat.make_extractor(params)
            t_direct, t_ours = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                direct.execute(str(image_path), str(mask_path), label=1)
                t_direct.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                image = io.read_image(image_path)
                mask = _read_mask(patient.name, specs[name], {"mask": mask_path}, image, pre)
                prepared = preprocess.prepare(image, mask, pre, n4=False, normalise=False)
                img, msk = preprocess.resample_pair(prepared, pre.spacing_mm, pre.interpolator)
                feat.extract(ours, img, msk, label=1)
                t_ours.append(time.perf_counter() - t0)
            t_direct, t_ours = min(t_direct), min(t_ours)
            rows.append(
                {
                    "patient": patient.name,
                    "modality": name,
                    "pyradiomics_s": t_direct,
                    "stromalens_s": t_ours,
                    "ratio": t_ours / t_direct,
                }
            )
    return pd.DataFrame(rows)


def normalisation_stability(data: Path, out: Path, workers: int) -> dict:
    """First-order features of the MR T1s under ``region: roi`` vs ``body``: how many are
    stable (perturbation ICC(1,1) ≥ 0.75: between-patient variation well above the
    perturbations'), and which have ICC < 0.5 (the normalisation leaves them nearly the same
    for every patient, or the perturbations swamp them)."""
    manifest = write_manifest(data, out, own_masks=True)
    result = {}
    for region in ("roi", "body"):
        config = validate_settings(
            RadiomicsConfig,
            {
                # the IBSI MRs are N4-corrected already; z-normalisation is what is compared
                "sequences": [{"name": "t1", "image": "mri_t1", "n4": False}],
                "preprocess": {"crop_margin_mm": 10, "normalise": {"region": region}},
                "extraction": {
                    "imageType": {"Original": {}},
                    "featureClass": {"firstorder": []},
                    "setting": {"binCount": 32, "padDistance": 5},
                },
                "stability": {"perturbations": 5, "patients": None},
                "harmonisation_check": {"enabled": False},
            },
            source=f"normalisation {region}",
        )
        folder = out / f"normalise_{region}"
        run_radiomics(manifest, folder, config, workers=workers, progress=False, check=False)
        table = pd.read_parquet(folder / "stability.parquet")
        name = table.index.str.replace("t1__original_firstorder_", "")
        result[region] = {
            "features": int(len(table)),
            "stable": int(table["stable"].sum()),
            "median_icc": round(float(table["icc"].median()), 3),
            "icc_below_0.5": sorted(name[table["icc"].fillna(0) < 0.5]),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "radiology" / "ibsi_sts"
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--out", type=Path, default=None, help="keep the tables here")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        own_csv = write_manifest(args.data, out, own_masks=True)
        moved_csv = write_manifest(args.data, out, own_masks=False)
        own_config = config_for("own")
        own, t1 = timed_run(own_csv, out / "own_w1", own_config, 1)
        _, tn = timed_run(own_csv, out / f"own_w{args.workers}", own_config, args.workers)
        results = {
            "scaling": {
                "workers": args.workers,
                "seconds_1": round(t1, 1),
                f"seconds_{args.workers}": round(tn, 1),
                "speedup": round(t1 / tn, 2),
            },
        }
        dice, agree = [], []
        for method in ("rigid", "none"):
            config = config_for("moved", method)
            moved, _ = timed_run(moved_csv, out / f"moved_{method}", config, args.workers)
            table = dice_table(args.data, config)
            dice.append(table)
            agree.append(agreement(own, moved).assign(registration=method))
            status = pd.read_csv(out / f"moved_{method}" / "patients.csv", index_col=0)
            results[f"failed_sequences_{method}"] = (
                status.get("failed_sequences", pd.Series(dtype=str)).dropna().to_dict()
            )
        dice = pd.concat(dice)
        agree = pd.concat(agree) if agree else pd.DataFrame()
        cost = overhead(args.data, own_config)
        results["dice"] = (
            dice.groupby(["method", "modality"])["dice"]
            .agg(["median", "min", "max", "count"])
            .round(3)
            .reset_index()
            .to_dict("records")
        )
        results["registration_seconds_median"] = (
            dice.groupby("method")["seconds"].median().round(2).to_dict()
        )
        results["shift_mm_median"] = dice.groupby(["method", "modality"])["shift_mm"].median()
        results["shift_mm_median"] = {
            f"{m}/{k}": round(v, 2) for (m, k), v in results["shift_mm_median"].items()
        }
        results["overhead"] = {
            "median_ratio": round(float(cost["ratio"].median()), 3),
            "by_modality": cost.groupby("modality")["ratio"].median().round(3).to_dict(),
            "total_ratio": round(cost["stromalens_s"].sum() / cost["pyradiomics_s"].sum(), 3),
        }
        results["normalisation_first_order"] = normalisation_stability(args.data, out, args.workers)
        dice.to_csv(out / "dice.csv", index=False)
        agree.to_csv(out / "agreement.csv", index=False)
        cost.to_csv(out / "overhead.csv", index=False)
        print(dice.round(4).to_string(index=False))
        print(agree.round(4).to_string(index=False))
        print(cost.round(3).to_string(index=False))
        print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
