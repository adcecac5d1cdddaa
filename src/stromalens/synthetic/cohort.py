"""Write a complete synthetic cohort in the manifest format.

Layout of the output directory::

    cohort.csv                 the manifest (paths relative to it)
    truth.parquet              planted latents, true cell fractions, linear predictors
    synth.json                 generator settings, version, timings
    rnaseq/counts.tsv          genes × samples, integer counts
    rnaseq/tpm.tsv             genes × samples, TPM
    rnaseq/signature.tsv       deconvolution signature from the pure cell-type profiles
                               (CIBERSORT layout: genes × cell types, TPM)
    rnaseq/mrna_content.tsv    mRNA per cell of each cell type (for mRNA-scaled fractions)
    wsi/<id>.tiff              pyramidal tiled TIFF (JPEG), 0.5 µm/px at level 0
    wsi/<id>.labels.png        compartment label map (codes in synth.json), 1/4 resolution
    wsi/<id>.artefacts.png     artefact bit map (blur 1, pen 2, fold 4), 1/4 resolution
    wsi/<id>.evidence.png      evidence hotspots of mechanism (a) (1 inside), 1/4 resolution
    wsi/<id>.cells.parquet     every rendered cell: x, y (level-0 px), kind, activation
    annotations/<id>.geojson   fibrosis region and immune-exclusion points (QuPath)
    mri/<id>/{t1,t2,ce,mask}.nii.gz

Per-patient files are written atomically and a per-patient record marks completion, so an
interrupted generation resumes where it stopped; the same seed gives the same cohort.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from ..cohort import KNOWN_COLUMNS
from ..config import SynthConfig
from ..executors import run_items
from ..logs import event, get_logger
from . import annotations, biology, expression, mechanisms, mri, slides

log = get_logger(__name__)

# the manifest columns of DESIGN.md, in their order (one slide per patient: no slide_id)
MANIFEST_COLUMNS = tuple(c for c in KNOWN_COLUMNS if c != "slide_id")
EXTERNAL_SITE = "X"


def _settings_hash(config: SynthConfig) -> str:
    payload = config.model_dump(mode="json", exclude={"workers"}) | {"version": __version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _patient_job(job: dict) -> dict:
    """Render and write one patient's slide, annotations and MRI (runs in a worker)."""
    out: Path = job["out"]
    pid = job["patient_id"]
    record_path = out / ".progress" / f"{pid}.json"
    if record_path.exists():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("settings") == job["settings"]:
            return record | {"resumed": True}
    import cv2

    cv2.setNumThreads(1)  # one process per core already; threads would oversubscribe
    timings = {}
    record: dict = {"patient_id": pid, "settings": job["settings"]}
    site = job["site_effects"]
    if job["wsi"]:
        t0 = time.perf_counter()
        geometry = job["geometry"]
        rendered = slides.render_slide(
            pd.Series(job["slide_fractions"]),
            job["slide_latents"],
            site,
            geometry,
            [job["seed"], job["index"], 11],
            morphology=job["morphology"],
            evidence=job["evidence"],
        )
        slides.write_pyramidal_tiff(out / job["wsi"], rendered.rgb, geometry)
        maps = [("labels", rendered.labels), ("artefacts", rendered.artefacts)]
        maps.append(("evidence", rendered.evidence))
        for name, array in maps:
            path = out / "wsi" / f"{pid}.{name}.png"
            tmp = path.with_name("partial-" + path.name)
            cv2.imwrite(str(tmp), array)
            tmp.replace(path)
        cells_path = out / "wsi" / f"{pid}.cells.parquet"
        rendered.cells.to_parquet(cells_path.with_name("partial-" + cells_path.name))
        cells_path.with_name("partial-" + cells_path.name).replace(cells_path)
        fibrosis = None
        if job["annotation_margin_px"] is not None:
            fibrosis = annotations.fibrosis_region(
                rendered.labels,
                rendered.evidence,
                job["annotation_margin_px"],
                geometry.label_downsample,
            )
        annotations.write_json(
            annotations.annotation_features(
                rendered.labels, geometry.label_downsample, rendered.exclusion_points, fibrosis
            ),
            out / job["annotations"],
        )
        record["artefacts"] = [s["kind"] for s in rendered.artefact_shapes]
        record["artefact_shapes"] = rendered.artefact_shapes
        record["n_cells"] = rendered.cells["kind"].value_counts().to_dict()
        record["n_exclusion_points"] = int(len(rendered.exclusion_points))
        timings["wsi_s"] = round(time.perf_counter() - t0, 3)
    if job["mri_sequences"]:
        t0 = time.perf_counter()
        images, mask = mri.render_mri(
            job["latents"],
            job["volume_cc"],
            site,
            [job["seed"], job["index"], 13],
            sequences=job["mri_sequences"],
            rho_scale=job["mri_rho_scale"],
        )
        folder = out / "mri" / pid
        folder.mkdir(parents=True, exist_ok=True)
        for seq, image in images.items():
            mri.write_nifti(image, folder / f"{seq}.nii.gz")
        mri.write_nifti(mask, folder / "mask.nii.gz")
        timings["mri_s"] = round(time.perf_counter() - t0, 3)
    record["timings"] = timings
    annotations.write_json(record, record_path)
    return record


def generate_cohort(
    out: Path | str, config: SynthConfig | None = None, *, progress: bool = True
) -> Path:
    """Generate the synthetic cohort described by ``config`` under ``out``; return the manifest.

    Example
    -------
    >>> manifest = generate_cohort("runs/cohort", SynthConfig(patients=8))  # doctest: +SKIP
    """
    config = config or SynthConfig()
    out = Path(out)
    for sub in ("rnaseq", "wsi", "annotations", "mri", ".progress"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    external = config.external
    seed = config.seed + (1_000_003 if external else 0)  # the external cohort has its own draw
    sites = (EXTERNAL_SITE,) if external else biology.SITES
    shares = (1.0,) if external else biology.SITE_SHARES
    planted = mechanisms.planted(config.mechanisms)
    site_shifts = mechanisms.site_mean_shifts(sites, planted.site_biology_shift)
    patients = biology.simulate_patients(
        config.patients,
        seed,
        sites=sites,
        site_shares=shares,
        id_prefix=config.id_prefix or ("X" if external else "P"),
        site_shifts=site_shifts,
        survival_scale=planted.survival_scale,
        interaction=planted.interaction,
    )
    # (b): each location's slide reliability g and MRI visibility factor f
    gains = [
        mechanisms.reliability_factors(loc, planted.reliability_contrast)
        for loc in patients["location"]
    ]
    patients["wsi_gain"] = [g[0] for g in gains]
    patients["mri_rho_scale"] = [g[1] for g in gains]
    ids = patients.index
    patients["rna_sample"] = [f"RNA-{pid}" for pid in ids]
    site_effects = {
        s: biology.make_site_effects(s, config.seed, planted.site_strength) for s in sites
    }

    fractions = expression.simulate_fractions(patients, seed)
    slide_patients, slide_fractions = _slide_biology(patients, seed, planted, external, site_shifts)
    counts, tpm = expression.simulate_expression(
        patients, fractions, {s: e.rna_batch_sd for s, e in site_effects.items()}, seed
    )
    _write_table(counts, out / "rnaseq" / "counts.tsv")
    _write_table(tpm, out / "rnaseq" / "tpm.tsv")
    _write_table(expression.signature_matrix(seed).round(4), out / "rnaseq" / "signature.tsv")
    _write_table(
        pd.Series(expression.MRNA_CONTENT, name="mrna_per_cell").rename_axis("cell_type"),
        out / "rnaseq" / "mrna_content.tsv",
    )

    # Missing modalities (a fixed draw per patient; the external cohort has no MRI).
    rng = np.random.default_rng([seed, 5])
    rates = config.missing
    has_wsi = rng.uniform(size=len(ids)) >= rates.wsi
    seq_present = {
        seq: (rng.uniform(size=len(ids)) >= getattr(rates, f"mri_{seq}")) & (not external)
        for seq in mri.SEQUENCES
    }
    grades_rng = np.random.default_rng([seed, 6])
    patients["fibrosis_grade"] = annotations.grade(patients["a"].to_numpy(), grades_rng)
    patients["exclusion_grade"] = annotations.grade(patients["b"].to_numpy(), grades_rng)

    geometry = slides.SlideGeometry(
        width=config.slide.width,
        height=config.slide.height,
        mpp=config.slide.mpp,
        jpeg_quality=config.slide.jpeg_quality,
    )
    settings = _settings_hash(config)
    jobs = []
    for i, pid in enumerate(ids):
        row = patients.loc[pid]
        sequences = tuple(s for s in mri.SEQUENCES if seq_present[s][i])
        margin = None
        if planted.annotation_margin_um is not None:
            margin = mechanisms.annotation_margin_px(
                planted.annotation_margin_um, row["fibrosis_grade"], geometry.mpp
            )
        jobs.append(
            (
                pid,
                {
                    "out": out,
                    "patient_id": pid,
                    "index": i,
                    "seed": seed,
                    "settings": settings,
                    "site_effects": site_effects[row["site"]],
                    "latents": {k: float(row[k]) for k in ("a", "b", "h")},
                    "slide_latents": {k: float(slide_patients.loc[pid, k]) for k in "abh"},
                    "slide_fractions": slide_fractions.loc[pid].to_dict(),
                    "evidence": slides.EvidenceSpec(
                        share=planted.evidence_share,
                        per_a=planted.evidence_per_a,
                        per_b=planted.evidence_per_b,
                        sparse=planted.sparse_evidence,
                        # (b) already acts on the slide latents; a gain here would count twice
                        gain=1.0,
                    ),
                    "mri_rho_scale": float(row["mri_rho_scale"]),
                    "annotation_margin_px": margin,
                    "volume_cc": float(row["volume_cc"]),
                    "geometry": geometry,
                    "morphology": planted.external_morphology if external else "chordoma",
                    "wsi": f"wsi/{pid}.tiff" if has_wsi[i] else None,
                    "annotations": f"annotations/{pid}.geojson",
                    "mri_sequences": sequences,
                },
            )
        )
    results = run_items(
        _patient_job,
        jobs,
        workers=config.workers,
        description="synthetic patients",
        progress=progress,
    )
    failed = [r for r in results if not r.ok]
    if failed:
        details = "\n".join(f"{r.key}: {r.error.splitlines()[0]}" for r in failed)
        raise RuntimeError(f"{len(failed)} synthetic patient(s) failed:\n{details}")
    records = {r.key: r.value for r in results}

    manifest = pd.DataFrame(index=ids)
    manifest["site"] = patients["site"]
    for seq in mri.SEQUENCES:
        manifest[f"mri_{seq}"] = [
            f"mri/{pid}/{seq}.nii.gz" if seq_present[seq][i] else "" for i, pid in enumerate(ids)
        ]
    any_mri = np.any([seq_present[s] for s in mri.SEQUENCES], axis=0)
    manifest["mri_mask"] = [
        f"mri/{pid}/mask.nii.gz" if any_mri[i] else "" for i, pid in enumerate(ids)
    ]
    manifest["wsi"] = [job["wsi"] or "" for _, job in jobs]
    manifest["wsi_mpp"] = ""
    for col in (
        "rna_sample",
        "age",
        "sex",
        "location",
        "volume_cc",
        "os_time",
        "os_event",
        "pfs_time",
        "pfs_event",
        "treatment",
        "response",
        "fibrosis_grade",
        "exclusion_grade",
    ):
        manifest[col] = patients[col]
    manifest["annotations"] = [job["annotations"] if job["wsi"] else "" for _, job in jobs]
    manifest = manifest.reset_index()[list(MANIFEST_COLUMNS)]
    manifest_path = out / "cohort.csv"
    _atomic_csv(manifest, manifest_path)

    truth = patients[
        [
            "site",
            "a",
            "b",
            "h",
            "u",
            "os_linear_predictor",
            "progression_linear_predictor",
            "progression_event",
            "location",
            "treatment",
            "wsi_gain",
            "mri_rho_scale",
        ]
    ].copy()
    truth["entropy"] = expression.shannon_entropy(fractions)
    truth["exclusion"] = 1.0 / (1.0 + np.exp(-1.8 * patients["b"]))
    for cell_type in fractions.columns:
        truth[f"fraction__{cell_type}"] = fractions[cell_type]
    truth["artefacts"] = [",".join(records[pid].get("artefacts", [])) for pid in ids]
    truth.to_parquet(out / "truth.parquet")

    elapsed = time.perf_counter() - started
    metadata = {
        "generator": "stromalens.synthetic",
        "stromalens_version": __version__,
        "settings_hash": settings,
        "config": config.model_dump(mode="json"),
        "seed_used": seed,
        "cohort": "external" if external else "development",
        "morphology": planted.external_morphology if external else "chordoma",
        "mechanisms": planted.as_dict(),
        "compartments": slides.COMPARTMENTS,
        "artefact_bits": slides.ARTEFACTS,
        "label_downsample": geometry.label_downsample,
        "site_effects": {s: asdict(e) for s, e in site_effects.items()},
        "survival": {
            "os_coefficients": biology.OS_COEFFICIENTS,
            "progression_coefficients": biology.PROGRESSION_COEFFICIENTS,
            "os_baseline_weibull_shape_scale": biology.OS_BASELINE,
            "progression_baseline_weibull_shape_scale": biology.PROGRESSION_BASELINE,
            "time_unit": "months",
        },
        "response_coefficients": biology.RESPONSE_COEFFICIENTS,
        "expression": {
            "counts": "rnaseq/counts.tsv",
            "tpm": "rnaseq/tpm.tsv",
            "orientation": "genes-x-samples",
            "signature": "rnaseq/signature.tsv",
            "mrna_content": "rnaseq/mrna_content.tsv",
        },
        "seconds": round(elapsed, 2),
        "resumed_patients": sum(bool(r.get("resumed")) for r in records.values()),
    }
    annotations.write_json(metadata, out / "synth.json")
    event(
        log,
        "synthetic cohort written",
        out=str(out),
        patients=len(ids),
        seconds=round(elapsed, 1),
        external=external,
    )
    return manifest_path


def _slide_biology(patients, seed, planted, external, site_shifts=None):
    """The latents and cell fractions the slides are rendered from.

    The fractions are the composition at α·a = 0
    (:func:`~stromalens.synthetic.expression.simulate_fractions` with ``with_a`` False): a
    slide's stroma share and fibroblast density do not follow the ERS–CAF latent, whose excess
    of CAFs the evidence term of mechanism (a) renders — in the hotspots, or spread evenly
    under its null. Were the fractions to carry a as well, every stromal tile would show it
    and the hotspots would add nothing that mean pooling misses.

    The external cohort under the null of mechanism (f): an independent draw of the same size
    (its slides carry no information on its RNA or outcomes). Otherwise the patients' slide
    view under (b) (:func:`~stromalens.synthetic.mechanisms.slide_view`, reliability
    ``patients["wsi_gain"]``, 1 where the column is absent), with fractions drawn from the
    slide latents whose composition noise keeps correlation g with the RNA's
    (:func:`~stromalens.synthetic.mechanisms.slide_composition`): at g = 1 (the null, and
    every reliable stratum) the patients' own latents, and the RNA's composition noise.
    """
    if external and not planted.external_visible:
        decoy = biology.simulate_patients(
            len(patients), seed + 104_729, sites=(EXTERNAL_SITE,), site_shares=(1.0,)
        )
        decoy.index = patients.index
        return decoy, expression.simulate_fractions(decoy, seed + 104_729, with_a=False)
    gain = patients["wsi_gain"].to_numpy(float) if "wsi_gain" in patients else None
    if gain is None or np.all(gain == 1.0):
        return patients, expression.simulate_fractions(patients, seed, with_a=False)
    # z′: the latent biology of an unrelated tumour, drawn for every patient (a fixed stream)
    fresh = np.random.default_rng([seed, 17]).multivariate_normal(
        np.zeros(3), biology.LATENT_CORRELATION, size=len(patients)
    )
    means = np.zeros((len(patients), 3))
    means[:, 0] = [(site_shifts or {}).get(s, 0.0) for s in patients["site"]]  # (c) shifts a
    view = patients.copy()
    view[["a", "b", "h"]] = mechanisms.slide_view(
        patients[["a", "b", "h"]].to_numpy(), fresh, gain, means
    )
    # the RNA's composition noise (its seed) and two independent draws, mixed like the latents
    draws = [
        expression.simulate_fractions(view, s, with_a=False)
        for s in (seed, seed + 1_299_709, seed + 1_299_721)
    ]
    return view, mechanisms.slide_composition(draws, gain, expression.IMMUNE_TYPES)


def _write_table(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name("partial-" + path.name)
    df.to_csv(tmp, sep="\t")
    tmp.replace(path)


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name("partial-" + path.name)
    df.to_csv(tmp, index=False)
    tmp.replace(path)
