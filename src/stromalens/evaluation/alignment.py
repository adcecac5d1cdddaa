"""Site alignment: leave-site-out fidelity before/after CORAL, the k-NN site-label entropy of the
fused embedding, and 2-D coordinates of the embedding for plotting.

k-NN site-label entropy (a batch-mixing score in the spirit of kBET, Büttner et al. 2019,
*Nat Methods* 16:43). For each patient i with neighbours N_k(i) (Euclidean, itself excluded)
and p_{i,s} the share of the neighbours from site s,

    H_i = −Σ_s p_{i,s} log p_{i,s} / log S,        entropy = mean_i H_i ∈ [0, 1],

S the number of sites (the normaliser is log min(S, k) when k < S, the largest attainable).
0 means every neighbourhood is one site (site-separated embedding); 1 means every neighbourhood
holds all sites equally (perfectly mixed). CORAL, which aligns the sites' feature means and
covariances, should raise it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .fidelity import macro_r


def knn_site_entropy(embedding: np.ndarray, sites, k: int = 10) -> float:
    """Mean normalised site-label entropy of each point's k nearest neighbours."""
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(embedding, float)
    sites = np.asarray(sites).astype(str)
    if x.ndim != 2 or len(x) != len(sites):
        raise ValueError(f"embedding {x.shape} and {len(sites)} site labels do not match")
    labels, codes = np.unique(sites, return_inverse=True)
    if len(labels) < 2:
        raise ValueError("site entropy needs at least two sites")
    k = min(k, len(x) - 1)
    if k < 1:
        raise ValueError("site entropy needs at least two points")
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    neighbours = codes[idx[:, 1:]]  # (n, k), itself dropped
    counts = np.stack([(neighbours == s).sum(1) for s in range(len(labels))], axis=1) / k
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(counts > 0, counts * np.log(counts), 0.0).sum(1)
    return float(np.mean(h) / np.log(min(len(labels), k)))


def leave_site_out_table(lso: pd.DataFrame) -> pd.DataFrame:
    """Per held-out site: n and the macro-r without (``fusion_no_coral``) and with (``fusion``)
    CORAL. ``lso`` holds leave-site-out predictions with study model names; ``fold`` is the
    held-out site."""
    rows = []
    for site, part in lso.groupby("fold", sort=True):
        before = part[part["model"] == "fusion_no_coral"]
        after = part[part["model"] == "fusion"]
        rows.append(
            {
                "site": str(site),
                "n": int(part["patient_id"].nunique()),
                "macro_r_before": macro_r(before) if len(before) else np.nan,
                "macro_r_after": macro_r(after) if len(after) else np.nan,
            }
        )
    return pd.DataFrame(rows)


def embed_2d(x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates for plotting: t-SNE (scikit-learn; perplexity ≤ (n − 1)/3), PCA when
    there are too few points for t-SNE."""
    x = np.asarray(x, float)
    if len(x) >= 10:
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, (len(x) - 1) / 3))
        coords = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
        return coords, "tsne"
    from sklearn.decomposition import PCA

    return PCA(2).fit_transform(x), "pca"


def embedding_table(embeddings: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """2-D coordinates of each stage's embedding. ``embeddings`` has patient_id, site, stage and
    the embedding columns ``e0 … e{F-1}`` (one fold model's embedding of every patient)."""
    cols = [c for c in embeddings.columns if c.startswith("e") and c[1:].isdigit()]
    frames = []
    for stage, part in embeddings.groupby("stage", sort=False):
        coords, method = embed_2d(part[cols].to_numpy(), seed)
        frames.append(
            pd.DataFrame(
                {
                    "patient_id": part["patient_id"].to_numpy(),
                    "site": part["site"].to_numpy(),
                    "stage": stage,
                    "x": coords[:, 0],
                    "y": coords[:, 1],
                    "method": method,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
