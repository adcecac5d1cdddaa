"""A small CLIP of open_clip's architecture, trained from scratch on synthetic tile–caption pairs.

No pathology CLIP weights can be downloaded here, so the default encoder is trained in a few
minutes on tiles of the synthetic slides, whose composition is known exactly: each tile's
compartment shares come from the slide's label map and its cell counts from the cells table.
A tile's caption names its dominant compartment (and a secondary one when it covers at least a
quarter of the tile), the density of fibroblasts in stroma and of lymphocytes, and sometimes a
compartment it lacks ("no tumour cells"), each phrase drawn from a list of synonyms and wrapped
in a template — so curated prompts, their synonyms and their negations land where they should.

Training minimises the symmetric contrastive (InfoNCE) loss of CLIP (Radford et al. 2021), with
every caption that truly describes a tile counted as its positive (soft targets):

    L = ½ [ CE(softmax(τ · I Tᵀ), Y) + CE(softmax(τ · T Iᵀ), Y'ᵀ) ],

with I, T the L2-normalised image and text embeddings of a batch, τ the learnt temperature and
M_ij = 1 when tile i and caption j's tile share a composition class and caption j names no
fibroblast density or names tile i's (:func:`contrastive_targets`); Y is M row-normalised, Y'
M column-normalised. Without the density term a "few fibroblasts" caption was a positive of
every dense stromal tile, so the loss could not teach the density words (measured on the
v4 checkpoint: cos("fibrous stroma with many fibroblasts", "… with few fibroblasts") = 0.999)
and the text prior of mechanism (g) was the same as its null. "Dense" is a tile whose
fibroblast density exceeds the median of the corpus's stromal tiles (:func:`density_labels`;
a per-slide median is the alternative, measured worse, see there).

Captions with no histology meaning ("a picture of a dog", "a knee x-ray") are appended to the
text side of every batch as negatives only (zero columns of Y), so out-of-domain prompts land
far from every tile. The checkpoint is written as
safetensors with a JSON sidecar (architecture, training settings, metrics) and loaded through
the encoder registry's local-checkpoint path, exactly like real weights.

References
----------
Radford A et al. Learning transferable visual models from natural language supervision.
ICML 2021. Ilharco G et al. OpenCLIP (2021), whose ``CLIP`` class is used unchanged.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..logs import event, get_logger

log = get_logger("wsi.synthclip")

#: Architecture of the synthetic CLIP (open_clip ``CLIP`` configuration).
SYNTHCLIP_CONFIG: dict = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 128, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 96, "heads": 4, "layers": 2},
}
#: v2: slides with a-dependent fibroblast density, and out-of-domain negative captions.
#: v4: trained on its own corpus, recorded in the sidecar (:func:`check_corpus_disjoint`).
#: v5: a caption naming a fibroblast density is a positive only of tiles of that density.
#: v6: trained on slides whose hotspot CAFs look activated (``synthetic.slides.CAF_ACTIVATION``).
CHECKPOINT_NAME = "synthclip-v6.safetensors"

COMPARTMENT_NAMES = ("stroma", "tumour", "immune")
#: Synonyms of each compartment; the first is the canonical phrase.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "stroma": (
        "fibrous stroma",
        "collagen-rich stroma",
        "desmoplastic stroma",
        "fibroblasts in collagen",
        "stromal tissue",
        "cancer-associated fibroblasts",
    ),
    "tumour": (
        "tumour cells",
        "tumor cells",
        "neoplastic cells",
        "tumour nests",
        "malignant cells",
        "vacuolated tumour cells",
    ),
    "immune": (
        "lymphocytes",
        "immune cells",
        "lymphoid aggregate",
        "inflammatory infiltrate",
        "immune infiltrate",
        "lymphocytic infiltrate",
    ),
}
TEMPLATES = (
    "{x}",
    "an H&E image of {x}",
    "histology showing {x}",
    "a tile of {x}",
    "H&E stained {x}",
    "a microscopy image of {x}",
)
JOINERS = ("{a} and {b}", "{a} with {b}", "{a} mixed with {b}")
NEGATIONS = ("no {x}", "without {x}", "free of {x}")
FIBRO_WORDS = {True: ("many fibroblasts", "dense fibroblasts"), False: ("few fibroblasts",)}
LYMPH_WORDS = ("scattered lymphocytes", "infiltrating lymphocytes")

#: Out-of-domain captions, used as negatives only: they describe no tile, so the contrastive loss
#: pushes every tile away from them and a phrase with no histology meaning lands far from tissue.
#: No word of the prompt banks' own out-of-domain phrases appears here (photograph, cat, chest,
#: radiograph, street, map, city, portrait, person, aerial, coastline, diagram, circuit, bowl,
#: fruit, table, satellite, farmland, handwritten, shopping, list), so the banks test whether
#: this generalises to phrases never seen.
OOD_SUBJECTS = (
    "a dog",
    "a horse",
    "a bicycle",
    "a mountain lake",
    "a kitchen",
    "a car on a road",
    "a football match",
    "a sunset over the sea",
    "a spreadsheet",
    "an old building",
    "a bird in a tree",
    "a plate of pasta",
    "a train station",
    "a forest path",
    "a snowy village",
    "a guitar",
    "a laptop keyboard",
    "a pair of shoes",
    "a glass of water",
    "a newspaper page",
    "a chess board",
    "a birthday cake",
    "a flower garden",
    "a boat in a harbour",
    "a desert at noon",
    "a clock tower",
    "a brain MRI scan",
    "an abdominal CT scan",
    "a knee x-ray",
    "an ultrasound of a fetus",
    "a bar chart",
    "a line graph of stock prices",
    "a page of sheet music",
    "a crowd at a concert",
    "a wooden chair",
    "a cup of coffee",
    "a rainy window",
    "a tennis court",
    "a lighthouse",
    "a field of sunflowers",
    "a bookshelf",
    "a written letter",
    "a cartoon character",
    "a company logo",
    "a bridge over a river",
    "a snowy mountain",
    "a red sports car",
)
OOD_TEMPLATES = (
    "{x}",
    "a picture of {x}",
    "a drawing of {x}",
    "a snapshot of {x}",
    "a painting of {x}",
    "a blurry picture of {x}",
    "a close-up of {x}",
    "a sketch of {x}",
)


def make_ood_captions(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` random out-of-domain captions (subject in a template)."""
    return [
        str(rng.choice(OOD_TEMPLATES)).format(x=str(rng.choice(OOD_SUBJECTS))) for _ in range(n)
    ]


def default_cache_dir() -> Path:
    """``$STROMALENS_CACHE`` or ``~/.cache/stromalens``."""
    return Path(os.environ.get("STROMALENS_CACHE", Path.home() / ".cache" / "stromalens"))


def default_checkpoint() -> Path:
    """Where the trained synthetic CLIP is cached."""
    return default_cache_dir() / "synthclip" / CHECKPOINT_NAME


# --------------------------------------------------------------------------- data
@dataclass
class TileSet:
    """Synthetic tiles at model resolution and their known composition."""

    images: np.ndarray  # (N, S, S, 3) uint8
    shares: np.ndarray  # (N, 3) stroma, tumour, immune share of the tile area
    fibroblasts: np.ndarray  # (N,) fibroblasts per mm² of stroma
    lymphocytes: np.ndarray  # (N,) lymphocytes in the tile
    slide: np.ndarray  # (N,) slide index
    classes: np.ndarray  # (N,) composition class index into CLASS_NAMES

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, mask: np.ndarray) -> TileSet:
        return TileSet(**{k: v[mask] for k, v in asdict(self).items()})


def composition_classes() -> list[tuple[str, str | None]]:
    """(dominant, secondary) composition classes; index = class id."""
    out: list[tuple[str, str | None]] = [(c, None) for c in COMPARTMENT_NAMES]
    out += [(a, b) for a in COMPARTMENT_NAMES for b in COMPARTMENT_NAMES if a != b]
    return out


def canonical_caption(dominant: str, secondary: str | None) -> str:
    """The canonical caption of a composition class (used for retrieval evaluation)."""
    a = SYNONYMS[dominant][0]
    return a if secondary is None else f"{a} and {SYNONYMS[secondary][0]}"


def classify(shares: np.ndarray, secondary_min: float = 0.25) -> np.ndarray:
    """Composition class of each tile from its (stroma, tumour, immune) shares."""
    classes = composition_classes()
    index = {c: i for i, c in enumerate(classes)}
    order = np.argsort(-shares, axis=1)
    out = np.empty(len(shares), np.int64)
    for n, (row, rank) in enumerate(zip(shares, order, strict=True)):
        dom = COMPARTMENT_NAMES[rank[0]]
        sec = COMPARTMENT_NAMES[rank[1]] if row[rank[1]] >= secondary_min else None
        out[n] = index[(dom, sec)]
    return out


def extract_tiles(
    slide_paths: list[Path],
    *,
    tile_px: int = 224,
    stride_px: int = 112,
    image_size: int = 64,
    min_tissue: float = 0.6,
) -> TileSet:
    """Tiles of synthetic slides (``<id>.tiff`` with ``.labels.png`` and ``.cells.parquet``)."""
    import cv2
    import pandas as pd

    from .reader import open_slide

    images, shares, fibro, lymph, slide_idx = [], [], [], [], []
    for s, path in enumerate(slide_paths):
        path = Path(path)
        stem = path.with_suffix("")
        labels = cv2.imread(str(stem) + ".labels.png", cv2.IMREAD_UNCHANGED)
        if labels is None:
            raise ValueError(f"{path}: no label map {stem}.labels.png beside the slide")
        cells = pd.read_parquet(str(stem) + ".cells.parquet")
        with open_slide(path) as slide:
            rgb = slide.read_level(0)
            mpp = slide.mpp
        ds = rgb.shape[0] // labels.shape[0]
        height, width = rgb.shape[:2]
        cx, cy = cells["x"].to_numpy(), cells["y"].to_numpy()
        kind = cells["kind"].astype(str).to_numpy()
        for y in range(0, height - tile_px + 1, stride_px):
            for x in range(0, width - tile_px + 1, stride_px):
                lab = labels[y // ds : (y + tile_px) // ds, x // ds : (x + tile_px) // ds]
                counts = np.bincount(lab.ravel(), minlength=4)[:4] / lab.size
                if 1.0 - counts[0] < min_tissue:
                    continue
                inside = (cx >= x) & (cx < x + tile_px) & (cy >= y) & (cy < y + tile_px)
                k = kind[inside]
                stroma_mm2 = counts[1] * (tile_px * mpp / 1000.0) ** 2
                fibro.append(np.sum(k == "fibroblast") / max(stroma_mm2, 1e-3))
                lymph.append(np.sum(k == "lymphocyte"))
                tile = rgb[y : y + tile_px, x : x + tile_px]
                images.append(
                    cv2.resize(tile, (image_size, image_size), interpolation=cv2.INTER_AREA)
                )
                shares.append(counts[1:] / max(counts[1:].sum(), 1e-9))
                slide_idx.append(s)
    if not images:
        raise ValueError("no tissue tiles in the given synthetic slides")
    shares_arr = np.asarray(shares, np.float32)
    return TileSet(
        images=np.stack(images),
        shares=shares_arr,
        fibroblasts=np.asarray(fibro, np.float32),
        lymphocytes=np.asarray(lymph, np.float32),
        slide=np.asarray(slide_idx),
        classes=classify(shares_arr),
    )


def make_caption(
    shares: np.ndarray,
    fibro_high: bool,
    lymph_present: bool,
    rng: np.random.Generator,
    secondary_min: float = 0.25,
    density_rate: float = 0.4,
) -> str:
    """A random caption of one tile's composition (synonym, template, modifiers, negation).

    A stromal tile's fibroblast density is named with probability ``density_rate`` (the text
    prior of mechanism (g); 0 is its null: no caption tells dense from sparse stroma).
    """
    order = np.argsort(-shares)
    dom = COMPARTMENT_NAMES[order[0]]
    phrase = str(rng.choice(SYNONYMS[dom]))
    if dom == "stroma" and rng.uniform() < density_rate:
        phrase += " with " + str(rng.choice(FIBRO_WORDS[fibro_high]))
    if shares[order[1]] >= secondary_min:
        sec = str(rng.choice(SYNONYMS[COMPARTMENT_NAMES[order[1]]]))
        phrase = str(rng.choice(JOINERS)).format(a=phrase, b=sec)
    elif lymph_present and dom != "immune" and rng.uniform() < 0.4:
        phrase += " with " + str(rng.choice(LYMPH_WORDS))
    absent = [c for c, v in zip(COMPARTMENT_NAMES, shares, strict=True) if v < 0.02]
    if absent and rng.uniform() < 0.35:
        neg = str(rng.choice(NEGATIONS)).format(
            x=str(rng.choice(SYNONYMS[str(rng.choice(absent))]))
        )
        phrase += ", " + neg
    return str(rng.choice(TEMPLATES)).format(x=phrase)


def caption_density(caption: str) -> bool | None:
    """The fibroblast density a caption of :func:`make_caption` names: True (dense), False
    (few), None (none named).

    Example
    -------
    >>> caption_density("fibrous stroma with few fibroblasts"), caption_density("tumour cells")
    (False, None)
    """
    for dense, words in FIBRO_WORDS.items():
        if any(word in caption for word in words):
            return dense
    return None


def density_labels(tiles: TileSet, cut: str = "global", stroma_min: float = 0.5) -> np.ndarray:
    """Which tiles a caption calls dense ("many fibroblasts"): fibroblasts per mm² of stroma
    above the median of the stromal tiles (stroma share > ``stroma_min``) of the same slide
    (``cut="slide"``) or of all the slides (``"global"``).

    The per-slide cut names the contrast that text-guided attention weighs (softmax weights
    compare the tiles of one slide) and that the hotspots of mechanism (a) plant; the global
    cut mixes it with the slides' differences in CAF fraction. Yet the global cut teaches the
    within-slide contrast better (issue 17, v6 on 30 fresh slides, hot vs cold stromal tiles
    ranked within slides by the curated prompts' score: AUC 0.75 global, 0.65 per slide;
    cos("… many fibroblasts", "… few fibroblasts") 0.83 vs 0.97): a within-slide label is
    harder to read from one tile, so the text tower learns less from it. A slide without
    stromal tiles falls back to the global median.

    Example
    -------
    >>> t = TileSet(images=np.zeros((4, 1, 1, 3), np.uint8), shares=np.tile([1.0, 0, 0], (4, 1)),
    ...             fibroblasts=np.array([1.0, 3.0, 10.0, 30.0]), lymphocytes=np.zeros(4),
    ...             slide=np.array([0, 0, 1, 1]), classes=np.zeros(4, np.int64))
    >>> density_labels(t, "slide").tolist(), density_labels(t, "global").tolist()
    ([False, True, False, True], [False, False, True, True])
    """
    if cut not in ("slide", "global"):
        raise ValueError(f"density cut must be 'slide' or 'global', got {cut!r}")
    stromal = tiles.shares[:, 0] > stroma_min
    overall = float(np.median(tiles.fibroblasts[stromal])) if stromal.any() else 0.0
    cuts = np.full(len(tiles), overall)
    if cut == "slide":
        for s in np.unique(tiles.slide):
            mine = tiles.slide == s
            if (mine & stromal).any():
                cuts[mine] = np.median(tiles.fibroblasts[mine & stromal])
    return tiles.fibroblasts > cuts


def contrastive_targets(classes: np.ndarray, dense: np.ndarray, named: list) -> np.ndarray:
    """(B, B) match indicator M of tiles (rows) and their batch's captions (columns).

    M_ij = [class_i = class_j] · [named_j is None or named_j = dense_i]: caption j describes
    tile i when their composition classes agree and any density it names is tile i's. The
    diagonal is 1 (a caption describes its own tile), so no row or column is empty.
    """
    classes, dense = np.asarray(classes), np.asarray(dense, bool)
    same = classes[:, None] == classes[None, :]
    said = np.array([n is not None for n in named])
    value = np.array([bool(n) for n in named])
    agree = ~said[None, :] | (dense[:, None] == value[None, :])
    return (same & agree).astype(np.float32)


# --------------------------------------------------------------------------- corpus
class CorpusOverlapError(ValueError):
    """A CLIP checkpoint was trained on slides of the cohort it is asked to evaluate."""


def corpus_record(slide_paths: list[Path]) -> dict:
    """What the sidecar records of the training corpus: each slide's id (file stem) and
    content hash (:func:`stromalens.wsi.store.slide_identity`, path-independent), and the
    generator's cohort record (seed, settings hash) when a ``synth.json`` sits beside it."""
    from .store import slide_identity

    slides = []
    for path in slide_paths:
        identity = slide_identity(path)
        slides.append({"slide_id": Path(path).stem, "sha256": identity["slide_sha256_partial"]})
    cohorts = []
    for folder in sorted({Path(p).resolve().parent.parent for p in slide_paths}):
        meta = folder / "synth.json"
        if meta.is_file():
            record = json.loads(meta.read_text(encoding="utf-8"))
            cohorts.append({k: record.get(k) for k in ("seed_used", "settings_hash", "cohort")})
    return {"slides": slides, "cohorts": cohorts}


def check_corpus_disjoint(checkpoint: Path | str, slide_paths) -> dict:
    """Refuse a checkpoint whose training slides include any of ``slide_paths``.

    Compares content hashes, so a copied or renamed slide is caught too. Returns
    ``{"checked": n, "corpus": m}``; a checkpoint without a corpus record (weights not trained
    by :func:`train_synthclip` of this version) returns ``{"checked": 0, ...}`` unverified.

    Raises
    ------
    CorpusOverlapError
        naming the overlapping slides, and what to do.
    """
    from .store import slide_identity

    slide_paths = list(slide_paths)
    sidecar = Path(checkpoint).with_suffix(".json")
    corpus = None
    if sidecar.is_file():
        corpus = json.loads(sidecar.read_text(encoding="utf-8")).get("corpus")
    if not corpus:
        return {"checked": 0, "corpus": None, "verified": False}
    trained = {s["sha256"]: s["slide_id"] for s in corpus["slides"]}
    overlap = []
    for path in slide_paths:
        digest = slide_identity(path)["slide_sha256_partial"]
        if digest in trained:
            overlap.append(f"{Path(path).name} (= corpus slide {trained[digest]})")
    if overlap:
        shown = ", ".join(overlap[:5]) + (
            f" and {len(overlap) - 5} more" if len(overlap) > 5 else ""
        )
        raise CorpusOverlapError(
            f"the CLIP checkpoint {checkpoint} was trained on {len(overlap)} slide(s) of the "
            f"evaluated cohort: {shown}. Train it on a separate corpus (other patients, another "
            "seed: stromalens demo does) or use other weights."
        )
    return {"checked": len(slide_paths), "corpus": len(trained), "verified": True}


# --------------------------------------------------------------------------- training
@dataclass
class ClipTrainSettings:
    """Settings of :func:`train_synthclip` (saved inside the checkpoint's JSON)."""

    # A fixed number of steps, never a time budget: the same seed gives the same weights on
    # any machine (600 steps: 132–177 s on one thread of a 2-core machine, measured).
    max_steps: int = 600
    batch_size: int = 96
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    holdout_fraction: float = 0.2
    seed: int = 0
    # One thread by default: on a 2-core machine shared with other work two threads thrash
    # (measured 2.8× slower). The demo, which trains it alone, uses two.
    threads: int | None = 1
    # Out-of-domain negative captions appended to each batch's text side.
    ood_per_batch: int = 24
    # Probability that a stromal caption names its fibroblast density (mechanism (g)).
    density_caption_rate: float = 0.4
    # What "many fibroblasts" is denser than: all slides' stromal tiles or the tile's own
    # slide's (:func:`density_labels`: "global" measured better).
    density_cut: str = "global"

    def __post_init__(self) -> None:
        if self.density_cut not in ("slide", "global"):
            raise ValueError(f"density_cut must be 'slide' or 'global', got {self.density_cut!r}")


def _augment(batch, rng):
    """Random flips and 90° rotations of uint8 tiles (B, S, S, 3)."""
    k = int(rng.integers(4))
    batch = np.rot90(batch, k, axes=(1, 2))
    if rng.uniform() < 0.5:
        batch = batch[:, :, ::-1]
    return np.ascontiguousarray(batch)


def retrieval_accuracy(model, tokenizer, transform, tiles: TileSet) -> dict:
    """Top-1 tile→caption retrieval among the canonical captions of all composition classes."""
    import torch

    classes = composition_classes()
    captions = [canonical_caption(*c) for c in classes]
    with torch.inference_mode():
        text = model.encode_text(tokenizer(captions))
        text = text / text.norm(dim=-1, keepdim=True)  # (K, D)
        preds = []
        for start in range(0, len(tiles.images), 256):
            img = model.encode_image(transform(tiles.images[start : start + 256]))
            img = img / img.norm(dim=-1, keepdim=True)  # (B, D)
            preds.append((img @ text.T).argmax(dim=1).numpy())
    pred = np.concatenate(preds)
    dominant_true = np.array([COMPARTMENT_NAMES.index(classes[c][0]) for c in tiles.classes])
    dominant_pred = np.array([COMPARTMENT_NAMES.index(classes[c][0]) for c in pred])
    counts = np.bincount(tiles.classes, minlength=len(classes))
    return {
        "n_tiles": int(len(pred)),
        "n_classes": len(classes),
        "top1_class": float(np.mean(pred == tiles.classes)),
        "top1_dominant": float(np.mean(dominant_pred == dominant_true)),
        "majority_class_rate": float(counts.max() / max(counts.sum(), 1)),
    }


def train_synthclip(
    slide_paths: list[Path],
    out: Path | None = None,
    settings: ClipTrainSettings | None = None,
    config: dict | None = None,
    progress: bool = True,
) -> dict:
    """Train the synthetic CLIP on ``slide_paths`` and write ``out`` (safetensors + JSON).

    Slides are split by slide into training and held-out sets; the held-out retrieval accuracy
    and the training time go into the JSON sidecar and the returned summary.
    """
    import open_clip
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    from ..hashing import sha256_file
    from .transforms import TileTransform

    settings = settings or ClipTrainSettings()
    config = config or SYNTHCLIP_CONFIG
    out = Path(out) if out is not None else default_checkpoint()
    slide_paths = [Path(p) for p in slide_paths]
    if len(slide_paths) < 2:
        raise ValueError(f"train-clip needs at least 2 synthetic slides, got {len(slide_paths)}")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)

    t0 = time.perf_counter()
    size = config["vision_cfg"]["image_size"]
    tiles = extract_tiles(slide_paths, image_size=size)
    n_slides = len(slide_paths)
    n_hold = max(1, int(round(settings.holdout_fraction * n_slides)))
    held_slides = rng.permutation(n_slides)[:n_hold]
    held = np.isin(tiles.slide, held_slides)
    train, test = tiles.subset(~held), tiles.subset(held)
    fibro_cut = float(np.median(train.fibroblasts[train.shares[:, 0] > 0.5])) if len(train) else 0
    train_dense = density_labels(train, settings.density_cut)
    lymph_cut = 8.0
    data_seconds = time.perf_counter() - t0
    event(log, "synthetic tiles", train=len(train), held_out=len(test), seconds=round(data_seconds))

    model = open_clip.CLIP(
        embed_dim=config["embed_dim"], vision_cfg=config["vision_cfg"], text_cfg=config["text_cfg"]
    )
    tokenizer = open_clip.get_tokenizer(
        "ViT-B-32", context_length=config["text_cfg"]["context_length"]
    )
    transform = TileTransform(size)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimiser = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": settings.weight_decay},
            {"params": other, "weight_decay": 0},
        ],
        lr=settings.lr,
    )
    t_train = time.perf_counter()
    step, losses = 0, []
    model.train()
    while step < settings.max_steps:
        idx = rng.choice(
            len(train.images), size=min(settings.batch_size, len(train.images)), replace=False
        )
        images = transform(_augment(train.images[idx], rng))  # (B, 3, S, S)
        dense = train_dense[idx]
        captions = [
            make_caption(
                train.shares[i],
                bool(d),
                bool(train.lymphocytes[i] >= lymph_cut),
                rng,
                density_rate=settings.density_caption_rate,
            )
            for i, d in zip(idx, dense, strict=True)
        ]
        n_ood = settings.ood_per_batch
        tokens = tokenizer(captions + make_ood_captions(n_ood, rng))  # (B + K, L)
        warm = min(1.0, (step + 1) / settings.warmup_steps)
        frac = step / settings.max_steps  # cosine decay over the steps
        for group in optimiser.param_groups:
            group["lr"] = settings.lr * warm * 0.5 * (1 + np.cos(np.pi * frac))
        img, txt, scale = model(images, tokens)  # (B, D), (B + K, D), ()
        logits = scale * img @ txt.T  # (B, B + K): the K out-of-domain captions are negatives
        match = torch.as_tensor(  # (B, B) tile i × caption j
            contrastive_targets(train.classes[idx], dense, [caption_density(c) for c in captions])
        )
        target = match / match.sum(dim=1, keepdim=True)  # (B, B) rows: each tile's captions
        image_to_text = F.cross_entropy(logits, F.pad(target, (0, n_ood)))
        # Text → image only for the tile captions: an out-of-domain caption has no positive.
        target_t = (match / match.sum(dim=0, keepdim=True)).T  # (B, B) rows: each caption's tiles
        text_to_image = F.cross_entropy(logits[:, : len(idx)].T, target_t)
        loss = 0.5 * (image_to_text + text_to_image)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        losses.append(float(loss.detach()))
        step += 1
        if progress and step % 100 == 0:
            event(log, "train-clip", step=step, loss=round(float(np.mean(losses[-100:])), 3))
    train_seconds = time.perf_counter() - t_train
    model.eval()
    metrics = retrieval_accuracy(model, tokenizer, transform, test)
    metrics_train = retrieval_accuracy(
        model, tokenizer, transform, train.subset(np.arange(len(train)) < 2000)
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp))
    os.replace(tmp, out)
    summary = {
        "model": config,
        "training": asdict(settings)
        | {
            "steps": step,
            "final_loss": float(np.mean(losses[-50:])) if losses else None,
            "train_seconds": round(train_seconds, 1),
            "data_seconds": round(data_seconds, 1),
            "n_train_tiles": int(len(train)),
            "n_heldout_tiles": int(len(test)),
            "n_slides": n_slides,
            "heldout_slides": [slide_paths[i].name for i in sorted(held_slides)],
            "fibroblast_cut_per_mm2": fibro_cut,  # the global median (density_cut "global")
            "lymphocyte_cut": lymph_cut,
        },
        "heldout_retrieval": metrics,
        "train_retrieval": metrics_train,
        "weights_sha256": sha256_file(out),
        "corpus": corpus_record(slide_paths),
        "captions": {
            "synonyms": SYNONYMS,
            "templates": TEMPLATES,
            "negations": NEGATIONS,
            "out_of_domain": {"subjects": OOD_SUBJECTS, "templates": OOD_TEMPLATES},
        },
    }
    sidecar = out.with_suffix(".json")
    tmp_json = sidecar.with_name(sidecar.name + ".partial")
    tmp_json.write_text(json.dumps(summary, indent=2))
    os.replace(tmp_json, sidecar)
    event(
        log,
        "synthetic CLIP trained",
        steps=step,
        seconds=round(train_seconds),
        heldout_top1=round(metrics["top1_class"], 3),
        path=str(out),
    )
    return summary
