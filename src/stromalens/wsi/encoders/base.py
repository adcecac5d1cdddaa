"""The encoder record (:class:`Encoder`), its metadata (:class:`EncoderInfo`) and the registry.

Every entry registers a builder together with a metadata record taken from the model's card or
reference code (feature width, text tower, input size, µm/px, normalisation, licence, hub id,
recommended precision), so ``stromalens wsi encoders`` and the tiling defaults read the facts
without building a model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from ..transforms import TileTransform
from .weights import find_local_weights


@dataclass(frozen=True)
class EncoderInfo:
    """What an encoder is, as published: one record per registry entry.

    Attributes
    ----------
    id : registry name (``get_encoder(id)``)
    embed_dim : width D of one tile's feature vector
    has_text : whether a text tower embeds prompts (needed by the CLIP-guided MIL)
    input_px : the square tile size in pixels the model was trained on (the tiling default)
    mpp : µm/px of its training tiles (0.5 = 20×)
    mean, std : per-channel input normalisation
    architecture : the network, in words
    pooling : how the tile vector is read from the network's tokens
    licence : the weights' licence, in brief (the model card is the authority)
    hub : the Hugging Face repository the weights come from (``None``: none)
    precision : recommended dtype on an accelerator (``fp32``, ``bf16``, ``fp16``)
    reference : the model card or paper the record is taken from
    """

    id: str
    embed_dim: int
    has_text: bool
    input_px: int
    mpp: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    architecture: str
    pooling: str
    licence: str
    hub: str | None
    precision: str = "fp32"
    reference: str = ""


@dataclass
class Encoder:
    """A loaded encoder; unpacks as ``(model, transforms, precision)`` like TRIDENT's loaders.

    ``precision`` is the encoder's recommended dtype on an accelerator (the CPU computes in
    fp32, :func:`stromalens.wsi.devices.resolve_precision`); ``image_fn`` maps normalised
    ``(B, 3, S, S)`` tensors to features ``(B, D)``.
    """

    name: str
    model: object
    transforms: TileTransform
    precision: object
    embed_dim: int
    weights: str
    weights_sha256: str
    image_fn: Callable = field(repr=False, default=None)
    text_fn: Callable | None = field(repr=False, default=None)
    config: dict = field(default_factory=dict)
    info: EncoderInfo | None = field(repr=False, default=None)

    def __iter__(self):
        return iter((self.model, self.transforms, self.precision))

    @property
    def has_text(self) -> bool:
        return self.text_fn is not None

    def encode_images(self, tiles):
        """Embeddings (B, D) float32 of uint8 tiles (B, H, W, 3), in the model's own dtype."""
        import torch

        dtype = next(self.model.parameters()).dtype
        with torch.inference_mode():
            x = self.transforms(tiles).to(dtype)  # (B, 3, S, S)
            return self.image_fn(x).float()  # (B, D)

    def encode_texts(self, texts: list[str]):
        """Text embeddings (N, D) float32; ``ValueError`` for image-only encoders."""
        import torch

        if self.text_fn is None:
            with_text = ", ".join(i.id for i in list_infos() if i.has_text)
            raise ValueError(
                f"encoder {self.name!r} is image-only (no text tower): the CLIP-guided MIL needs "
                f"prompt embeddings; use an encoder with text ({with_text}) or a model that "
                "needs no text (ABMIL, CLAM, TransMIL, mean pooling …)"
            )
        with torch.inference_mode():
            return self.text_fn(list(texts)).float()


_REGISTRY: dict[str, tuple[EncoderInfo, Callable[..., Encoder]]] = {}


def register_encoder(info: EncoderInfo):
    """Decorator adding a builder ``fn(weights, allow_download, **overrides) -> Encoder``."""

    def wrap(fn):
        if info.id in _REGISTRY:
            raise ValueError(f"encoder {info.id!r} is already registered")
        _REGISTRY[info.id] = (info, fn)
        return fn

    return wrap


def list_encoders() -> list[str]:
    """Names of the registered encoders."""
    return sorted(_REGISTRY)


def list_infos() -> list[EncoderInfo]:
    """The metadata records of every registered encoder, by name."""
    return [_REGISTRY[name][0] for name in list_encoders()]


def encoder_info(name: str) -> EncoderInfo:
    """The metadata record of encoder ``name`` (``ValueError`` naming it if unknown)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown encoder {name!r}; registered: {', '.join(list_encoders())}")
    return _REGISTRY[name][0]


def get_encoder(
    name: str,
    weights=None,
    *,
    allow_download: bool = False,
    weights_dir=None,
    _depth: int | None = None,
) -> Encoder:
    """Build the registered encoder ``name`` with ``weights`` (a path, 'random' or 'hub').

    Without ``weights``, ``<weights_dir or $STROMALENS_WEIGHTS>/<name>`` is used when it exists.
    ``_depth`` (tests only) builds a transformer with fewer blocks, each of the published shape.
    """
    import torch

    info = encoder_info(name)
    if weights is None:
        weights = find_local_weights(name, weights_dir)
    overrides = {} if _depth is None else {"depth": int(_depth)}
    build = _REGISTRY[name][1]
    if weights == "random":
        # drawn from a fixed seed: the same random encoder in every process and run, so runs
        # with random weights (timing, tests) are reproducible and their caches stay valid
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            encoder = build(weights=weights, allow_download=allow_download, **overrides)
    elif weights == "hub" or (allow_download and weights is None):
        with _fetching(name, info.hub or name):
            encoder = build(weights=weights, allow_download=allow_download, **overrides)
    else:
        encoder = build(weights=weights, allow_download=allow_download, **overrides)
    encoder.info = info
    encoder.precision = getattr(torch, _DTYPES[info.precision])  # recommended on accelerators
    return encoder


_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@contextlib.contextmanager
def _fetching(name: str, source: str):
    """A hub download (asked for with allow_download) that fails, offline say, is one error
    naming the encoder and the source, not the hub client's traceback."""
    try:
        yield
    except (ValueError, TypeError):
        raise  # the project's own refusals already say what to do
    except Exception as exc:  # noqa: BLE001 - any hub-client failure is one clear line
        first = str(exc).splitlines()[0][:200] if str(exc) else "no message"
        raise ValueError(
            f"encoder {name!r}: could not fetch {source} from the hub ({type(exc).__name__}: "
            f"{first}); offline, give a local weight file or snapshot folder as weights instead"
        ) from None
