"""Macenko stain normalisation: fitted once per slide, applied to tiles in torch batches.

Macenko et al. (2009). With transmitted intensity I₀ and optical density OD = −log((I + 1)/I₀):

1. drop near-transparent pixels (any channel's OD < β);
2. take the plane of the two leading eigenvectors of the OD covariance; project the pixels and
   measure their angle φ; the stain vectors are the plane directions at the α-th and
   (100 − α)-th percentiles of φ (haematoxylin first: the one with the larger red OD);
3. concentrations C solve OD = S C in the least-squares sense (S the 3 × 2 stain matrix);
   their 99th percentiles are the slide's maximal concentrations C_max.

Normalisation to a reference (S_ref, C_max,ref) maps each pixel to

    I_norm = I₀ · exp(−S_ref · C · C_max,ref / C_max),

clipped to [0, 255]. The default reference is bundled (``resources/macenko_reference.json``):
the stain matrix and maximal concentrations fitted with this module on TIAToolbox's H&E
target tile (BSD-3, see ``resources/NOTICE``).

Where it runs. :meth:`MacenkoNormalizer.transform` is one float32 torch kernel that normalises
a batch where the batch lies: in the decode workers on the CPU, or on the encoder's GPU after
the host-to-device copy (``EmbedSettings.stain_on_device``), where the per-pixel work is a few
memory-bound elementwise passes. :meth:`MacenkoNormalizer.transform_numpy` is the same map in
float64 numpy, the reference the kernel is tested against (within one grey level).

References
----------
Macenko M et al. A method for normalizing histology slides for quantitative analysis.
ISBI 2009:1107–1110. Reference implementation compared in tests: torchstain (MIT).

Example
-------
>>> norm = MacenkoNormalizer().fit(sample_rgb)        # doctest: +SKIP
>>> tiles_out = norm.transform(tiles)                  # (B, H, W, 3) uint8 → same
>>> on_gpu = norm.transform(torch.from_numpy(tiles).cuda())  # normalised on the GPU
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class StainReference:
    """A stain matrix (3 × 2, columns H and E, unit OD vectors) and maximal concentrations."""

    stain_matrix: np.ndarray
    max_concentrations: np.ndarray
    name: str = "custom"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "stain_matrix": np.asarray(self.stain_matrix).round(6).tolist(),
            "max_concentrations": np.asarray(self.max_concentrations).round(6).tolist(),
        }


def default_reference() -> StainReference:
    """The bundled H&E reference (TIAToolbox's target tile, BSD-3)."""
    text = resources.files("stromalens.wsi").joinpath("resources/macenko_reference.json")
    data = json.loads(text.read_text(encoding="utf-8"))
    return StainReference(
        np.asarray(data["stain_matrix"], float),
        np.asarray(data["max_concentrations"], float),
        name=data.get("name", "bundled"),
    )


def reference_from_image(path_or_rgb, io: float = 240.0, alpha: float = 1.0, beta: float = 0.15):
    """Fit a :class:`StainReference` on an RGB image (array or image file path)."""
    if isinstance(path_or_rgb, str | Path):
        from PIL import Image

        rgb = np.asarray(Image.open(path_or_rgb).convert("RGB"))
        name = Path(path_or_rgb).name
    else:
        rgb, name = np.asarray(path_or_rgb), "custom"
    matrix, max_c = fit_macenko(rgb, io=io, alpha=alpha, beta=beta)
    return StainReference(matrix, max_c, name=name)


def _od(rgb: np.ndarray, io: float) -> np.ndarray:
    return -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1.0) / io)


def fit_macenko(
    rgb: np.ndarray, io: float = 240.0, alpha: float = 1.0, beta: float = 0.15
) -> tuple[np.ndarray, np.ndarray]:
    """Stain matrix (3 × 2) and 99th-percentile concentrations (2,) of an RGB sample.

    ``rgb`` is any array whose last axis is RGB (uint8), e.g. (H, W, 3) or (N, H, W, 3).
    """
    rgb = np.asarray(rgb)
    if rgb.shape[-1] != 3:
        raise ValueError(f"fit_macenko needs RGB pixels in the last axis, got shape {rgb.shape}")
    od = _od(rgb, io)  # (P, 3)
    od_hat = od[~np.any(od < beta, axis=1)]
    if len(od_hat) < 100:
        raise ValueError(
            f"only {len(od_hat)} stained pixels (OD ≥ {beta} in every channel); "
            "Macenko needs a tissue sample"
        )
    _, eigvecs = np.linalg.eigh(np.cov(od_hat.T))
    plane = eigvecs[:, [1, 2]]  # (3, 2)
    projected = od_hat @ plane  # (P, 2)
    phi = np.arctan2(projected[:, 1], projected[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100 - alpha])
    v_min = plane @ np.array([np.cos(lo), np.sin(lo)])
    v_max = plane @ np.array([np.cos(hi), np.sin(hi)])
    matrix = np.stack([v_min, v_max], 1) if v_min[0] > v_max[0] else np.stack([v_max, v_min], 1)
    matrix *= np.where(matrix.sum(axis=0) < 0, -1.0, 1.0)  # OD vectors point to positive OD
    conc = np.linalg.lstsq(matrix, od.T, rcond=None)[0]  # (2, P)
    max_c = np.percentile(conc, 99, axis=1)
    return matrix, max_c


class MacenkoNormalizer:
    """Macenko normalisation of one slide to a reference.

    Parameters
    ----------
    reference : target stains; default the bundled H&E reference.
    io, alpha, beta : transmitted intensity, angle percentile, transparency threshold
        (Macenko's defaults, as torchstain's).
    """

    def __init__(self, reference: StainReference | None = None, io=240.0, alpha=1.0, beta=0.15):
        self.reference = reference or default_reference()
        self.io, self.alpha, self.beta = float(io), float(alpha), float(beta)

    def fit(self, rgb: np.ndarray) -> MacenkoNormalizer:
        """Fit the slide's stain matrix and maximal concentrations on a tissue sample."""
        self.stain_matrix_, self.max_concentrations_ = fit_macenko(
            rgb, self.io, self.alpha, self.beta
        )
        return self

    def params(self) -> dict:
        """Everything needed to reproduce the transform (stored in the HDF5 attributes)."""
        self._check()
        return {
            "method": "macenko",
            "io": self.io,
            "alpha": self.alpha,
            "beta": self.beta,
            "stain_matrix": self.stain_matrix_.round(6).tolist(),
            "max_concentrations": self.max_concentrations_.round(6).tolist(),
            "reference": self.reference.to_dict(),
        }

    def _check(self) -> None:
        if not hasattr(self, "stain_matrix_"):
            raise ValueError("MacenkoNormalizer is not fitted; call fit() on a tissue sample")

    def _constants(self, device):
        """The transform's constants as float32 tensors on ``device``: S⁺ (2 × 3), the
        concentration scale C_max,ref / C_max (2,) and S_ref (3 × 2). S⁺ is computed on the CPU,
        so every device maps pixels with the same numbers."""
        import torch

        pinv = torch.linalg.pinv(torch.as_tensor(self.stain_matrix_, dtype=torch.float32))
        scale = torch.as_tensor(
            self.reference.max_concentrations / self.max_concentrations_, dtype=torch.float32
        )
        ref = torch.as_tensor(self.reference.stain_matrix, dtype=torch.float32)
        return pinv.to(device), scale.to(device), ref.to(device)

    def transform(self, tiles):
        """Normalise tiles, (B, H, W, 3) or (H, W, 3) uint8, numpy or torch; same type back.

        A torch tensor is normalised where it lies (CPU, CUDA, MPS), in float32, batched: on
        an accelerator this runs after the host-to-device copy, next to the encoder
        (``EmbedSettings.stain_on_device``). The two 3-channel products run in IEEE fp32 even
        where TF32 is allowed (TF32's 10-bit mantissa would move pixels by several grey
        levels). Equal to the float64 :meth:`transform_numpy` within one grey level.
        """
        import torch

        self._check()
        is_numpy = isinstance(tiles, np.ndarray)
        if is_numpy and not tiles.flags.writeable:
            tiles = tiles.copy()
        x = torch.from_numpy(tiles) if is_numpy else tiles
        if x.shape[-1] != 3:
            raise ValueError(f"transform needs channels-last RGB tiles, got shape {tuple(x.shape)}")
        shape = x.shape
        pinv, scale, ref = self._constants(x.device)  # (2, 3), (2,), (3, 2)
        with _ieee_fp32_matmul():
            od = -torch.log((x.reshape(-1, 3).float() + 1.0) / self.io)  # (P, 3)
            conc = od @ pinv.T  # (P, 2)
            out = self.io * torch.exp(-(conc * scale) @ ref.T)  # (P, 3)
        out = out.clamp_(0, 255).round_().to(torch.uint8).reshape(shape)
        return out.numpy() if is_numpy else out

    def transform_numpy(self, tiles: np.ndarray) -> np.ndarray:
        """The same map in float64 numpy, I_norm = I₀ · exp(−S_ref · diag(C_max,ref / C_max) ·
        S⁺ · OD), rounded half to even and clipped to uint8: the reference the batched torch
        :meth:`transform` is tested against, and a torch-free path."""
        self._check()
        tiles = np.asarray(tiles)
        if tiles.shape[-1] != 3:
            raise ValueError(f"transform needs channels-last RGB tiles, got shape {tiles.shape}")
        od = -np.log((tiles.reshape(-1, 3).astype(np.float64) + 1.0) / self.io)  # (P, 3)
        conc = od @ np.linalg.pinv(self.stain_matrix_).T  # (P, 2)
        scale = self.reference.max_concentrations / self.max_concentrations_
        out = self.io * np.exp(-(conc * scale) @ np.asarray(self.reference.stain_matrix).T)
        return np.clip(np.round(out), 0, 255).astype(np.uint8).reshape(tiles.shape)


@contextlib.contextmanager
def _ieee_fp32_matmul():
    """Float32 matrix products in full IEEE precision inside the block (no TF32, no bf16
    passes), whatever ``torch.set_float32_matmul_precision`` the user or a library chose;
    restored on exit."""
    import torch

    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)
