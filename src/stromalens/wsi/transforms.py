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


class TileTransform:
    """uint8 tiles (B, H, W, 3) → float (B, 3, S, S), resized (antialiased) and normalised."""

    def __init__(self, size: int, mean=OPENAI_MEAN, std=OPENAI_STD):
        self.size, self.mean, self.std = int(size), tuple(mean), tuple(std)

    def __call__(self, tiles):
        import torch
        import torch.nn.functional as F

        x = torch.as_tensor(np.asarray(tiles)) if isinstance(tiles, np.ndarray) else tiles
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.shape[-1] != 3:
            raise ValueError(f"tiles must be (B, H, W, 3) uint8, got shape {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(
                x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
            )
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std  # (B, 3, S, S)

    def __repr__(self) -> str:
        return f"TileTransform(size={self.size}, mean={self.mean}, std={self.std})"
