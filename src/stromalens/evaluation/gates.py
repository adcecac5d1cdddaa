"""Gate weights by clinical strata (analysis 4): where does the fusion lean on the slide and
where on the MRI, and how well does each model do in each stratum.

The gate g of the gated fusion multiplies [z_rad; z_wsi]; its mean over the MRI half and over
the WSI half, per patient (patients with both modalities), is averaged within each stratum of
tumour location, volume tertile and age group. Beside it, the out-of-fold macro-r of the fusion
and single-modality models within the stratum.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .fidelity import macro_r

STRATA_MODELS = ("fusion", "wsi_clip", "mri")
#: age groups (years), left-closed
AGE_BINS = (0, 50, 65, np.inf)
AGE_LABELS = ("<50", "50-64", "≥65")


def strata(clinical: pd.DataFrame) -> pd.DataFrame:
    """patient_id → location, volume_tertile (T1–T3 within the cohort), age_group."""
    out = pd.DataFrame(index=clinical.index)
    if "location" in clinical:
        out["location"] = clinical["location"].astype("string")
    if "volume_cc" in clinical and clinical["volume_cc"].notna().sum() >= 3:
        out["volume_tertile"] = pd.qcut(
            clinical["volume_cc"].astype(float), 3, labels=["T1", "T2", "T3"]
        ).astype("string")
    if "age" in clinical:
        out["age_group"] = pd.cut(
            clinical["age"].astype(float), AGE_BINS, right=False, labels=AGE_LABELS
        ).astype("string")
    return out


def gate_strata_table(
    gates: pd.DataFrame, predictions: pd.DataFrame, clinical: pd.DataFrame
) -> pd.DataFrame:
    """stratifier, stratum, n, gate_wsi, gate_wsi_sd, gate_mri, model, macro_r (one row per
    stratum and model; the gate columns repeat across the models of a stratum), and
    ``p_kruskal``: the Kruskal–Wallis p that the WSI gate differs between the stratifier's
    strata."""
    from scipy import stats

    table = strata(clinical)
    both = gates[gates["has_wsi"] & gates["has_mri"]].set_index("patient_id")
    rows = []
    for stratifier in table.columns:
        # does the gate differ between the strata? Kruskal–Wallis on the per-patient WSI gate
        groups = [
            both.loc[both.index.intersection(m.index), "gate_wsi"].to_numpy()
            for _, m in table.groupby(stratifier, dropna=True)
        ]
        groups = [g for g in groups if len(g) >= 2]
        p_kruskal = (
            float(stats.kruskal(*groups).pvalue)
            if len(groups) >= 2 and np.ptp(np.concatenate(groups)) > 0
            else np.nan
        )
        for stratum, members in table.groupby(stratifier, dropna=True):
            ids = members.index
            g = both.loc[both.index.intersection(ids)]
            for model in STRATA_MODELS:
                part = predictions[
                    (predictions["model"] == model) & predictions["patient_id"].isin(ids)
                ]
                rows.append(
                    {
                        "stratifier": stratifier,
                        "stratum": str(stratum),
                        "n": int(len(ids)),
                        "gate_wsi": float(g["gate_wsi"].mean()) if len(g) else np.nan,
                        "gate_wsi_sd": float(g["gate_wsi"].std(ddof=1)) if len(g) > 1 else np.nan,
                        "gate_mri": float(g["gate_mri"].mean()) if len(g) else np.nan,
                        "model": model,
                        "macro_r": macro_r(part) if part["patient_id"].nunique() >= 4 else np.nan,
                        "p_kruskal": p_kruskal,
                    }
                )
    return pd.DataFrame(rows)
