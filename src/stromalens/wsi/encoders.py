"""Encoder registry: ``get_encoder(name, weights=...)`` → (model, transforms, precision).

Every entry builds its architecture locally and loads weights from a local file or a local hub
snapshot directory, with ``torch.load(weights_only=True)`` or safetensors; the file's sha256 is
recorded in every feature store written with it. Nothing is downloaded unless the caller passes
``allow_download=True`` (CLI: ``--allow-download``). ``weights="random"`` gives random weights
(timing benchmarks, tests).

Entries
-------
``synthclip``        the small open_clip-architecture CLIP trained on synthetic tiles
                     (:mod:`stromalens.wsi.synthclip`; default, cached locally)
``openclip-vit-b-32``, ``openclip-vit-b-16``, ``openclip-vit-l-14``
                     open_clip architectures; any open_clip checkpoint (OpenAI CLIP, LAION …)
``quiltnet-b-32``    QuiltNet (open_clip ViT-B/32 fine-tuned on Quilt-1M); a local snapshot of
                     ``wisdomik/QuiltNet-B-32``
``plip``             PLIP (Hugging Face ``CLIPModel``; needs ``transformers``)
``conch``            CONCH (needs the ``conch`` package and the user's own weights)
``timm-vit-s-16``, ``timm-resnet50``
                     image-only timm encoders for baselines (no text tower)

Images enter as uint8 tiles ``(B, H, W, 3)`` (torch or numpy); ``transforms`` turns them into
normalised float ``(B, 3, S, S)`` at the model's input size; the model's image embedding is the
projected (not L2-normalised) CLIP image feature, or timm's pooled feature.

Example
-------
>>> enc = get_encoder("openclip-vit-b-32", weights="random")   # doctest: +SKIP
>>> model, transforms, precision = enc
>>> feats = enc.encode_images(tiles)                           # (B, 512)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..hashing import sha256_file
from .transforms import IMAGENET_MEAN, IMAGENET_STD, OPENAI_MEAN, OPENAI_STD, TileTransform

#: File names searched, in order, inside a local snapshot directory.
WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
)

_REGISTRY: dict[str, Callable[..., Encoder]] = {}


def register_encoder(name: str):
    """Decorator adding a builder ``fn(weights, allow_download) -> Encoder`` to the registry."""

    def wrap(fn):
        if name in _REGISTRY:
            raise ValueError(f"encoder {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_encoders() -> list[str]:
    """Names of the registered encoders."""
    return sorted(_REGISTRY)


@dataclass
class Encoder:
    """A loaded encoder; unpacks as ``(model, transforms, precision)`` like TRIDENT's loaders."""

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

    def __iter__(self):
        return iter((self.model, self.transforms, self.precision))

    @property
    def has_text(self) -> bool:
        return self.text_fn is not None

    def encode_images(self, tiles):
        """Embeddings (B, D) float32 of uint8 tiles (B, H, W, 3)."""
        import torch

        with torch.inference_mode():
            x = self.transforms(tiles).to(self.precision)  # (B, 3, S, S)
            return self.image_fn(x).float()  # (B, D)

    def encode_texts(self, texts: list[str]):
        """Text embeddings (N, D) float32; ``ValueError`` for image-only encoders."""
        import torch

        if self.text_fn is None:
            raise ValueError(f"encoder {self.name!r} has no text tower")
        with torch.inference_mode():
            return self.text_fn(list(texts)).float()


# --------------------------------------------------------------------------- weights
def resolve_weights(path: Path | str) -> Path:
    """A weight file: ``path`` itself or the first of :data:`WEIGHT_FILES` inside a directory."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"no weight file ({', '.join(WEIGHT_FILES)}) in {path}")
    if not path.is_file():
        raise FileNotFoundError(f"weights not found: {path}")
    return path


def load_state_dict(path: Path | str) -> tuple[dict, str]:
    """State dict from a local file or snapshot directory, and the file's sha256.

    safetensors files load with ``safetensors.torch.load_file``; anything else with
    ``torch.load(weights_only=True)`` (no code in a checkpoint is ever executed).
    """
    import torch

    file = resolve_weights(path)
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file))
    else:
        import pickle

        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # torch's own message advises weights_only=False, i.e. running the file's code
            raise ValueError(
                f"{file}: refused: it holds Python objects besides tensors, which are never "
                "loaded (torch.load(weights_only=True)); save the state dict alone "
                "(torch.save(model.state_dict(), path)) or as safetensors"
            ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{file} does not hold a state dict")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state, sha256_file(file)


def _weights_spec(weights, name: str, allow_download: bool, hub: str | None):
    """Normalise ``weights``: 'random', a local path, or 'hub' (only with allow_download)."""
    if weights is None:
        raise ValueError(
            f"encoder {name!r} needs weights: a local file or snapshot directory, "
            "or 'random' for timing and tests"
            + (f" (or 'hub' with --allow-download to fetch {hub})" if hub else "")
        )
    if weights == "hub":
        if not hub:
            raise ValueError(f"encoder {name!r} has no hub source")
        if not allow_download:
            raise ValueError(
                f"encoder {name!r}: downloading {hub} needs an explicit allow_download=True "
                "(--allow-download)"
            )
    return weights


@contextlib.contextmanager
def _fetching(name: str, source: str):
    """A hub download (asked for with allow_download) that fails, offline say, is one error
    naming the encoder and the source, not the hub client's traceback."""
    try:
        yield
    except Exception as exc:
        raise ValueError(
            f"encoder {name!r}: could not fetch {source} from the hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else 'no message'}); offline, give a "
            "local weight file or snapshot folder as weights instead"
        ) from None


# --------------------------------------------------------------------------- open_clip
def build_open_clip(
    name: str,
    arch: str | dict,
    weights,
    *,
    allow_download: bool = False,
    hub: str | None = None,
    mean=OPENAI_MEAN,
    std=OPENAI_STD,
) -> Encoder:
    """An open_clip model of architecture ``arch`` (a registered name, or a config dict)."""
    import open_clip
    import torch

    weights = _weights_spec(weights, name, allow_download, hub)
    if isinstance(arch, dict):
        config = dict(arch)
        model = open_clip.CLIP(
            embed_dim=config["embed_dim"],
            vision_cfg=config["vision_cfg"],
            text_cfg=config["text_cfg"],
        )
        tokenizer_name, context = "ViT-B-32", config["text_cfg"].get("context_length", 77)
        image_size = config["vision_cfg"]["image_size"]
    else:
        config = {"arch": arch}
        if weights == "hub":
            with _fetching(name, hub):
                model, _, _ = open_clip.create_model_and_transforms(f"hf-hub:{hub}")
        else:
            model = open_clip.create_model(arch, pretrained=None)
        tokenizer_name, context = arch, None
        image_size = model.visual.image_size
        image_size = image_size[0] if isinstance(image_size, tuple | list) else image_size
    sha = "random"
    if weights not in ("random", "hub"):
        state, sha = load_state_dict(weights)
        model.load_state_dict(state, strict=True)
        weights = str(resolve_weights(weights))
    elif weights == "hub":
        sha = "hub:" + hub
    model.eval()
    tokenizer = open_clip.get_tokenizer(tokenizer_name, context_length=context)

    def image_fn(x):
        return model.encode_image(x)  # (B, D)

    def text_fn(texts):
        return model.encode_text(tokenizer(texts))  # (N, D)

    with torch.inference_mode():
        dim = int(model.encode_image(torch.zeros(1, 3, image_size, image_size)).shape[-1])
    return Encoder(
        name=name,
        model=model,
        transforms=TileTransform(image_size, mean, std),
        precision=torch.float32,
        embed_dim=dim,
        weights=str(weights),
        weights_sha256=sha,
        image_fn=image_fn,
        text_fn=text_fn,
        config=config,
    )


def default_synthclip_weights() -> Path:
    """Where ``stromalens wsi train-clip`` caches the synthetic CLIP (``$STROMALENS_CACHE``)."""
    from .synthclip import default_checkpoint

    return default_checkpoint()


@register_encoder("synthclip")
def _synthclip(weights=None, allow_download=False) -> Encoder:
    from .synthclip import SYNTHCLIP_CONFIG

    config = SYNTHCLIP_CONFIG
    if weights is None:
        weights = default_synthclip_weights()
        if not Path(weights).is_file():
            raise FileNotFoundError(
                f"no synthetic CLIP at {weights}; run `stromalens wsi train-clip` first"
            )
    if weights != "random":
        sidecar = resolve_weights(weights).with_suffix(".json")
        if sidecar.is_file():
            config = json.loads(sidecar.read_text(encoding="utf-8"))["model"]
    return build_open_clip("synthclip", config, weights)


def _open_clip_entry(name: str, arch: str, hub: str | None = None):
    @register_encoder(name)
    def _build(weights=None, allow_download=False) -> Encoder:
        return build_open_clip(name, arch, weights, allow_download=allow_download, hub=hub)

    return _build


_open_clip_entry("openclip-vit-b-32", "ViT-B-32")
_open_clip_entry("openclip-vit-b-16", "ViT-B-16")
_open_clip_entry("openclip-vit-l-14", "ViT-L-14")
_open_clip_entry("quiltnet-b-32", "ViT-B-32", hub="wisdomik/QuiltNet-B-32")


@register_encoder("plip")
def _plip(weights=None, allow_download=False) -> Encoder:
    """PLIP (Huang et al. 2023): a Hugging Face CLIPModel; ``weights`` is its snapshot directory."""
    try:
        import transformers
    except ImportError:
        raise ImportError("the 'plip' encoder needs `pip install transformers`") from None
    import torch

    weights = _weights_spec(weights, "plip", allow_download, "vinid/plip")
    if weights == "random":
        config = transformers.CLIPConfig(
            text_config={
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
            },
            vision_config={
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": 224,
                "patch_size": 32,
            },
            projection_dim=64,
        )
        model, sha, source = transformers.CLIPModel(config), "random", "random"
        tokenizer = None
    else:
        source = "vinid/plip" if weights == "hub" else str(weights)
        if weights != "hub" and not Path(weights).is_dir():
            raise ValueError(f"PLIP weights must be a snapshot directory, got {weights!r}")
        with _fetching("plip", source) if weights == "hub" else contextlib.nullcontext():
            model = transformers.CLIPModel.from_pretrained(
                source, local_files_only=weights != "hub"
            )
            tokenizer = transformers.CLIPTokenizer.from_pretrained(
                source, local_files_only=weights != "hub"
            )
        sha = sha256_file(resolve_weights(source)) if weights != "hub" else "hub:vinid/plip"
    model.eval()

    def projected(output):
        # transformers < 5 returns the projected embeddings, 5 a model output whose
        # pooler_output holds them.
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def text_fn(texts):
        if tokenizer is None:
            # Random weights come without tokenizer files: open_clip's tokenizer has the same
            # byte-pair vocabulary and special tokens as PLIP's (OpenAI CLIP's), zero-padded.
            import open_clip

            ids = open_clip.tokenize(texts)  # (B, 77)
            tokens = {"input_ids": ids, "attention_mask": (ids > 0).long()}
        else:
            tokens = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        return projected(model.get_text_features(**tokens))

    return Encoder(
        name="plip",
        model=model,
        transforms=TileTransform(224),
        precision=torch.float32,
        embed_dim=int(model.config.projection_dim),
        weights=source,
        weights_sha256=sha,
        image_fn=lambda x: projected(model.get_image_features(pixel_values=x)),
        text_fn=text_fn,
    )


@register_encoder("conch")
def _conch(weights=None, allow_download=False) -> Encoder:
    """CONCH (Lu et al. 2024) through its own loader; the user brings its (gated) weights."""
    try:
        from conch.open_clip_custom import create_model_from_pretrained, get_tokenizer, tokenize
    except ImportError:
        raise ImportError(
            "the 'conch' encoder needs the CONCH package (github.com/mahmoodlab/CONCH) "
            "and its weights file"
        ) from None
    import torch

    weights = _weights_spec(weights, "conch", allow_download, None)
    if weights == "random":
        raise ValueError("CONCH has no random-weight mode; pass its checkpoint file")
    file = resolve_weights(weights)
    model, _ = create_model_from_pretrained("conch_ViT-B-16", checkpoint_path=str(file))
    model.eval()
    tokenizer = get_tokenizer()
    return Encoder(
        name="conch",
        model=model,
        transforms=TileTransform(448),
        precision=torch.float32,
        embed_dim=512,
        weights=str(file),
        weights_sha256=sha256_file(file),
        image_fn=lambda x: model.encode_image(x, proj_contrast=True, normalize=False),
        text_fn=lambda texts: model.encode_text(tokenize(tokenizer, texts)),
    )


def _timm_entry(name: str, arch: str, size: int):
    @register_encoder(name)
    def _build(weights=None, allow_download=False) -> Encoder:
        import timm
        import torch

        weights = _weights_spec(weights, name, allow_download, f"timm/{arch}")
        with _fetching(name, f"timm/{arch}") if weights == "hub" else contextlib.nullcontext():
            model = timm.create_model(arch, pretrained=weights == "hub", num_classes=0)
        sha = "random" if weights == "random" else f"hub:timm/{arch}"
        if weights not in ("random", "hub"):
            state, sha = load_state_dict(weights)
            state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc."))}
            model.load_state_dict(state, strict=True)
        model.eval()
        dim = int(model.num_features)
        return Encoder(
            name=name,
            model=model,
            transforms=TileTransform(size, IMAGENET_MEAN, IMAGENET_STD),
            precision=torch.float32,
            embed_dim=dim,
            weights=str(weights),
            weights_sha256=sha,
            image_fn=model,
            text_fn=None,
            config={"arch": arch},
        )

    return _build


_timm_entry("timm-vit-s-16", "vit_small_patch16_224", 224)
_timm_entry("timm-resnet50", "resnet50", 224)


def get_encoder(name: str, weights=None, *, allow_download: bool = False) -> Encoder:
    """Build the registered encoder ``name`` with ``weights`` (path, 'random' or 'hub').

    Raises ``ValueError`` naming the encoder if it is not registered.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown encoder {name!r}; registered: {', '.join(list_encoders())}")
    return _REGISTRY[name](weights=weights, allow_download=allow_download)
