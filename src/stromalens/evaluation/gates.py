r"""Gate shares by clinical strata (analysis 4): how much of the fused representation comes
from the slide and how much from the MRI, and how well each model does in each stratum.

The gated fusion (:mod:`stromalens.models.fusion`) feeds its trunk with

.. math::

    h = g \odot [z_{rad}; z_{wsi}] = [\,h_{rad};\ h_{wsi}\,], \qquad
    h_{rad} = g_{1:H} \odot z_{rad}, \quad h_{wsi} = g_{H+1:2H} \odot z_{wsi},

so the two branches occupy disjoint coordinates of h and :math:`\lVert h\rVert^2 =
\lVert h_{rad}\rVert^2 + \lVert h_{wsi}\rVert^2` exactly. Each branch's share of the fused
contribution, per patient, is its part of that sum:

.. math::

    \text{share}_{WSI} = \frac{\lVert h_{wsi}\rVert^2}{\lVert h_{rad}\rVert^2 +
    \lVert h_{wsi}\rVert^2}, \qquad \text{share}_{MRI} = 1 - \text{share}_{WSI}.

Unlike the mean gate value of each half, the share counts what the gate lets through: a gate of
1 on a latent near 0 contributes nothing. The shares sum to 1 per patient; a patient whose h is
0 (no modality) has none (NaN). Within each stratum of tumour location, volume tertile and age
group (patients with both modalities), the mean share and its SD, the mean raw gate value of
the WSI half for reference, and the Kruskal–Wallis p that the WSI share differs between
strata (Kruskal & Wallis 1952, *JASA* 47:583–621). Beside it, the out-of-fold macro-r of the
fusion and single-modality models within the stratum.

Example
-------
>>> h = np.array([[3.0, 0.0, 0.0, 4.0]])              # H = 2: h_rad = (3, 0), h_wsi = (0, 4)
>>> contribution_shares(h)
(array([0.36]), array([0.64]))
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .fidelity import macro_r

STRATA_MODELS = ("fusion", "wsi_clip", "mri")
#: age groups (years), left-closed
AGE_BINS = (0, 50, 65, np.inf)
AGE_LABELS = ("<50", "50-64", "≥65")


def contribution_shares(fused) -> tuple[np.ndarray, np.ndarray]:
    """(share_mri, share_wsi), each (B,), of the fused representations ``fused`` = h (B, 2H),
    MRI half first as the model concatenates them; NaN where ‖h‖ = 0. Equation: the module
    docstring."""
    h = np.asarray(fused, float)
    if h.ndim != 2 or h.shape[1] % 2:
        raise ValueError(f"fused must be (B, 2H) with an MRI and a WSI half, got {h.shape}")
    half = h.shape[1] // 2
    mri = np.sum(h[:, :half] ** 2, axis=1)  # ‖h_rad‖²
    wsi = np.sum(h[:, half:] ** 2, axis=1)  # ‖h_wsi‖²
    total = mri + wsi
    with np.errstate(invalid="ignore", divide="ignore"):
        share_wsi = np.where(total > 0, wsi / total, np.nan)
    return 1.0 - share_wsi, share_wsi


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


def _kruskal(both: pd.DataFrame, table: pd.DataFrame, stratifier: str) -> float:
    """Kruskal–Wallis p that the per-patient WSI share differs between the strata."""
    from scipy import stats

    groups = [
        both.loc[both.index.intersection(m.index), "share_wsi"].dropna().to_numpy()
        for _, m in table.groupby(stratifier, dropna=True)
    ]
    groups = [g for g in groups if len(g) >= 2]
    if len(groups) < 2 or np.ptp(np.concatenate(groups)) == 0:
        return np.nan
    return float(stats.kruskal(*groups).pvalue)


def gate_strata_table(
    gates: pd.DataFrame, predictions: pd.DataFrame, clinical: pd.DataFrame
) -> pd.DataFrame:
    """stratifier, stratum, n, n_share, share_wsi, share_wsi_sd, share_mri, gate_wsi_mean,
    model, macro_r (one row per stratum and model; the gate columns repeat across the models of
    a stratum), and ``p_kruskal``: the Kruskal–Wallis p that the WSI share differs between the
    stratifier's strata. ``n`` counts the stratum's patients (the macro-r's); ``n_share`` the
    finite shares behind share_wsi and its SD (patients with both modalities), the n of any
    standard error of share_wsi. ``gates`` holds the probes' per-patient rows (patient_id,
    share_wsi, share_mri, gate_wsi_mean, has_wsi, has_mri)."""
    table = strata(clinical)
    both = gates[gates["has_wsi"] & gates["has_mri"]].set_index("patient_id")
    rows = []
    for stratifier in table.columns:
        p_kruskal = _kruskal(both, table, stratifier)
        for stratum, members in table.groupby(stratifier, dropna=True):
            ids = members.index
            g = both.loc[both.index.intersection(ids)]
            share = g["share_wsi"].dropna()
            gate_columns = {
                # the shares' own count (patients with both modalities): n counts the stratum
                "n_share": int(len(share)),
                "share_wsi": float(share.mean()) if len(share) else np.nan,
                "share_wsi_sd": float(share.std(ddof=1)) if len(share) > 1 else np.nan,
                # the per-patient shares sum to 1, so their means do too
                "share_mri": float(1.0 - share.mean()) if len(share) else np.nan,
                "gate_wsi_mean": float(g["gate_wsi_mean"].mean()) if len(g) else np.nan,
            }
            for model in STRATA_MODELS:
                part = predictions[
                    (predictions["model"] == model) & predictions["patient_id"].isin(ids)
                ]
                rows.append(
                    {
                        "stratifier": stratifier,
                        "stratum": str(stratum),
                        "n": int(len(ids)),
                        **gate_columns,
                        "model": model,
                        "macro_r": macro_r(part) if part["patient_id"].nunique() >= 4 else np.nan,
                        "p_kruskal": p_kruskal,
                    }
                )
    return pd.DataFrame(rows)
