"""Tile preprocessing shared by every encoder: uint8 tiles → normalised float tensors.

Kept apart from the registry (:mod:`.encoders`) so that encoder implementations such as
:mod:`.synthclip` use it without importing the registry, which imports them.
"""

from __future__ import annotations

import numpy as np

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: H-optimus-0/1's normalisation (bioptimus model cards).
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)


class TileTransform:
    """uint8 tiles (B, H, W, 3) → float (B, 3, S, S): resized, centre-cropped and normalised.

    As torchvision's ``Resize(resize_px) → CenterCrop(size) → ToTensor → Normalize(mean, std)``
    on tensors (antialiased): tiles are resized to ``resize_px`` (default ``size``; e.g. 256 for
    Prov-GigaPath's "resize 256, crop 224"), the central ``size`` pixels kept, and each channel
    normalised, ``x' = (x / 255 − mean) / std``. A tile already at ``size`` is not resampled.
    """

    def __init__(
        self,
        size: int,
        mean=OPENAI_MEAN,
        std=OPENAI_STD,
        *,
        resize_px: int | None = None,
        interpolation: str = "bilinear",
    ):
        self.size, self.mean, self.std = int(size), tuple(mean), tuple(std)
        self.resize_px = int(resize_px or size)
        if self.resize_px < self.size:
            raise ValueError(f"resize_px={resize_px} is smaller than the crop size {size}")
        if interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation must be bilinear or bicubic, got {interpolation!r}")
        self.interpolation = interpolation

    def __call__(self, tiles):
        import torch
        import torch.nn.functional as F

        x = torch.as_tensor(np.asarray(tiles)) if isinstance(tiles, np.ndarray) else tiles
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.shape[-1] != 3:
            raise ValueError(f"tiles must be (B, H, W, 3) uint8, got shape {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
        if x.shape[-1] != self.resize_px or x.shape[-2] != self.resize_px:
            x = F.interpolate(
                x,
                size=(self.resize_px, self.resize_px),
                mode=self.interpolation,
                antialias=True,
                align_corners=False,
            )
        if self.resize_px != self.size:  # centre crop, torchvision's rounding
            top = int(round((self.resize_px - self.size) / 2.0))
            x = x[..., top : top + self.size, top : top + self.size]
        # on the tiles' device: the transform runs on the GPU when preprocessing is there
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std  # (B, 3, S, S)

    def __repr__(self) -> str:
        return (
            f"TileTransform(size={self.size}, resize_px={self.resize_px}, "
            f"interpolation={self.interpolation!r}, mean={self.mean}, std={self.std})"
        )
