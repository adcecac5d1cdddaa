"""Training data: tile bags (HDF5 feature stores), radiomics, targets and prompt embeddings, and
the per-fold preprocessing fitted on training patients only.

:class:`StudyData` holds one cohort in memory (bags as float32 arrays, radiomics and targets as
DataFrames indexed by ``patient_id``). :class:`FoldPreprocessor` is a scikit-learn-style
estimator: ``fit(data, train_ids)`` learns everything that is fitted from data — the ICC
stability filter (from the perturbed extractions of training patients), the ComBat site
harmonisation, the radiomics standardisation, S_LR's gene scaling, the target z-scoring and
min–max scaling — from the training patients only, and ``transform(data, ids)`` applies it
unchanged to any patients, returning tensors ready for :func:`make_batch`.

The ``lr`` target of the targets table has its gene scaling fitted on the whole cohort, held-out
patients included. When the targets stage wrote its inputs (``lr_inputs.parquet``,
:class:`~stromalens.targets.lr.LRInputs`), each fold refits :class:`~stromalens.targets.lr.
LRCrosstalk` on its training patients and rescores every patient with it
(:func:`fit_fold_lr`, :func:`fold_targets`); the fold's models are trained towards, and
evaluated against, that fold's S_LR.

Stage I targets are min–max scaled on the training fold, ỹ = (y − min) / (max − min + ε),
ε = 1e-8; stages II/III regress the z-scored targets z = (y − μ̂) / σ̂.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..logs import event, get_logger
from ..names import TARGETS

if TYPE_CHECKING:
    from ..targets.lr import LRCrosstalk, LRInputs

log = get_logger("training.data")

EPS = 1e-8
#: Version of :meth:`FoldPreprocessor.state`'s layout.
STATE_VERSION = 1


@dataclass
class StudyData:
    """A cohort in memory.

    patients    list of patient ids (the row order everywhere)
    sites       (P,) site labels
    bags        {patient_id: (n_i, D) float32} for patients with a slide
    radiomics   DataFrame (patients × features), NaN where a sequence is missing; may be empty
    targets     DataFrame (patients × J) in TARGETS order, NaN where unknown
    prompts     (J, M, D) float32 prompt text embeddings (curated prompts), or None
    perturbations  the radiomics perturbation table (MultiIndex patient_id, perturbation) or None
    text        the frozen CLIP text tower with the curated prompts' tokens that CoOp runs
                (:func:`coop_text_tower`), or None
    genes       DataFrame (patients × G) log2(TPM + 1) of the genes the targets are scored
                from (the targets stage's gene table; HE2RNA's gene layer), or None
    lr_inputs   :class:`~stromalens.targets.lr.LRInputs` (rows = patients) from which each
                fold refits the ``lr`` target (:func:`fold_targets`), or None: the folds then
                train on the table's whole-cohort ``lr`` column
    """

    patients: list[str]
    sites: np.ndarray
    bags: dict[str, np.ndarray]
    radiomics: pd.DataFrame
    targets: pd.DataFrame
    prompts: np.ndarray | None = None
    perturbations: pd.DataFrame | None = None
    meta: dict = field(default_factory=dict)
    text: object | None = None
    genes: pd.DataFrame | None = None
    lr_inputs: LRInputs | None = None

    def __post_init__(self) -> None:
        if len(set(self.patients)) != len(self.patients):
            raise ValueError("duplicate patient ids in the study data")
        self.sites = np.asarray(self.sites).astype(str)
        if len(self.sites) != len(self.patients):
            raise ValueError(f"{len(self.sites)} site labels for {len(self.patients)} patients")
        self.radiomics = self.radiomics.reindex(self.patients)
        self.targets = self.targets.reindex(self.patients)
        if self.genes is not None:
            self.genes = self.genes.reindex(self.patients).astype(float)
        if self.lr_inputs is not None:
            self.lr_inputs = self.lr_inputs.reindex(self.patients)
        dims = {b.shape[1] for b in self.bags.values() if len(b)}
        if len(dims) > 1:
            raise ValueError(f"tile feature dimensions differ between slides: {sorted(dims)}")

    @property
    def tile_dim(self) -> int:
        for bag in self.bags.values():
            return int(bag.shape[1])
        if self.prompts is not None:
            return int(self.prompts.shape[2])
        raise ValueError("no slide features and no prompts: the tile dimension is unknown")

    def site_of(self) -> pd.Series:
        return pd.Series(self.sites, index=self.patients, name="site")

    def subset(self, ids) -> StudyData:
        ids = list(ids)
        keep = set(ids)
        sites = self.site_of().loc[ids].to_numpy()
        return StudyData(
            patients=ids,
            sites=sites,
            bags={k: v for k, v in self.bags.items() if k in keep},
            radiomics=self.radiomics.loc[ids],
            targets=self.targets.loc[ids],
            prompts=self.prompts,
            perturbations=self.perturbations,
            meta=self.meta,
            text=self.text,
            genes=None if self.genes is None else self.genes.loc[ids],
            lr_inputs=self.lr_inputs,
        )

    def permuted(self, order) -> StudyData:
        """This data with patient ``i`` given the targets (and S_LR inputs) of patient
        ``order[i]``: the shuffled-targets negative control. The inputs move with the targets,
        so a fold's refitted S_LR (:func:`fold_targets`) stays shuffled too."""
        donors = [self.patients[k] for k in order]
        targets = pd.DataFrame(
            self.targets.loc[donors].to_numpy(), index=self.patients, columns=self.targets.columns
        )
        lr_inputs = self.lr_inputs
        if lr_inputs is not None:
            mapping = dict(zip(donors, self.patients, strict=True))
            lr_inputs = lr_inputs.reindex(donors).relabel(mapping)
        return StudyData(**{**self.__dict__, "targets": targets, "lr_inputs": lr_inputs})


def fit_fold_lr(data: StudyData, train_ids) -> LRCrosstalk | None:
    """S_LR (:class:`~stromalens.targets.lr.LRCrosstalk`) with its gene scaling fitted on the
    training patients ``train_ids`` (those with complete inputs), or None without inputs.

    Also None where the refitted score is constant on the training patients, which a handful
    of them can give (min–max scaling over two patients maps every gene to 0 or 1, and most
    pair products to 0): the fold then trains on the table's lr column, and a warning says so,
    rather than stopping a run whose other folds are well defined."""
    if data.lr_inputs is None:
        return None
    train_ids = list(train_ids)
    lr = data.lr_inputs.fit(train_ids)
    scored = data.lr_inputs.score(lr, train_ids).dropna()
    if scored.nunique() < 2:
        event(
            log,
            "S_LR refitted on this fold's training patients is constant; the fold trains on "
            "the table's lr column, whose scaling saw the held-out patients",
            logging.WARNING,
            training_patients=len(train_ids),
        )
        return None
    return lr


def fold_targets(data: StudyData, ids, lr: LRCrosstalk | None = None) -> pd.DataFrame:
    """The targets of ``ids`` as a fold sees them (TARGETS columns, target units): the table's,
    with ``lr`` rescored by the fold's fitted ``lr`` (:func:`fit_fold_lr`) when the study has
    S_LR inputs. A patient whose table value is unknown stays unknown."""
    table = data.targets.loc[list(ids), list(TARGETS)]
    if lr is None or data.lr_inputs is None:
        return table
    scored = data.lr_inputs.score(lr, list(ids))
    return table.assign(lr=scored.where(table["lr"].notna()).to_numpy())


# ---------------------------------------------------------------------------- loading
@dataclass
class PatientTiles:
    """A patient's bag: the tiles of all their slides, pooled in slide order, after the random
    subset :func:`bag_subset` keeps."""

    features: np.ndarray  # (n, D) float32
    coords: np.ndarray  # (n, 2) level-0 top-left corners, x then y, in the tile's own slide
    slide_ids: np.ndarray  # (n,) the slide each tile comes from
    tile_px: np.ndarray  # (n,) the tile's level-0 side on its slide


def read_patient_tiles(
    features_dir: Path | str,
    patient_id: str,
    slide_ids=None,
    max_tiles: int | None = None,
    seed: int = 0,
) -> PatientTiles | None:
    """The pooled bag of ``patient_id``'s slides (``slide_ids``; default: the one slide named
    after the patient): every complete store ``<features_dir>/<slide_id>.h5`` in order, then at
    most ``max_tiles`` of the pooled tiles (:func:`bag_subset`). ``None`` if no slide has a
    complete store with tiles. Stores of one patient must share the feature width."""
    from ..wsi.store import feature_path, is_complete, read_slide

    parts = []
    for sid in slide_ids if slide_ids is not None else [patient_id]:
        path = feature_path(features_dir, str(sid))
        if not is_complete(path, require_features=True):
            continue
        slide = read_slide(path)
        feats = np.asarray(slide.features, np.float32)
        if len(feats):
            side = float(slide.attrs.get("tile_level0_px", slide.attrs.get("read_px", 224)))
            parts.append((str(sid), feats, np.asarray(slide.coords), side))
    if not parts:
        return None
    widths = {f.shape[1] for _, f, _, _ in parts}
    if len(widths) > 1:
        raise ValueError(
            f"patient {patient_id}: slide stores of different feature widths {sorted(widths)} "
            "(embed all slides with one encoder)"
        )
    features = np.concatenate([f for _, f, _, _ in parts])
    keep = bag_subset(len(features), max_tiles, seed, patient_id)
    return PatientTiles(
        features=features[keep],
        coords=np.concatenate([c for _, _, c, _ in parts])[keep],
        slide_ids=np.concatenate([[sid] * len(f) for sid, f, _, _ in parts])[keep],
        tile_px=np.concatenate([[side] * len(f) for _, f, _, side in parts])[keep],
    )


def read_bags(
    features_dir: Path | str,
    patients,
    max_tiles: int | None = None,
    seed: int = 0,
    slides: dict | None = None,
) -> dict[str, np.ndarray]:
    """Tile embeddings of each patient that has a slide store: the patient's slides
    (``slides[patient]``, e.g. :meth:`~stromalens.cohort.Cohort.slide_ids`; by default the one
    store ``<features_dir>/<patient_id>.h5``) pooled into one bag (:func:`read_patient_tiles`).

    ``features_dir`` is the folder of the ``.h5`` files (``stromalens wsi embed``'s
    ``<out>/<encoder>/<tiling>/``); TRIDENT, CLAM (``features``) and STAMP (``feats``) feature
    files are read too (:func:`~stromalens.wsi.store.read_slide`).

    Bags larger than ``max_tiles`` keep a random subset (fixed by ``seed`` and the patient id),
    so very large slides stay within memory and time; ``None`` keeps every tile.
    """
    bags: dict[str, np.ndarray] = {}
    for pid in patients:
        ids = (slides or {}).get(str(pid), [str(pid)])
        tiles = read_patient_tiles(features_dir, str(pid), ids, max_tiles, seed)
        if tiles is not None:
            bags[str(pid)] = tiles.features
    return bags


def bag_subset(n: int, max_tiles: int | None, seed: int, patient_id) -> np.ndarray:
    """Sorted indices of the tiles :func:`read_bags` keeps of a slide with ``n`` tiles: all of
    them, or ``max_tiles`` drawn at random with a generator fixed by ``seed`` and the patient."""
    if max_tiles is None or n <= max_tiles:
        return np.arange(n)
    rng = np.random.default_rng([seed, *str(patient_id).encode()])
    return np.sort(rng.choice(n, max_tiles, replace=False))


def prompt_embeddings(
    banks_dir: Path | str,
    encoder: str = "synthclip",
    weights=None,
    cache_dir: Path | str | None = None,
    targets=TARGETS,
    group: str = "curated",
) -> np.ndarray:
    """(J, M, D) text embeddings of the curated prompts of each target, in ``targets`` order
    (of the bank group ``group`` instead: ``synonym``, ``antonym`` or ``ood``, the prompt
    perturbation's retrained prompt sets).

    Targets with fewer prompts than the largest bank repeat their prompts cyclically
    (which leaves the mixture's span unchanged)."""
    from ..wsi.encoders import get_encoder
    from ..wsi.prompts import embed_bank, embedding_matrix, load_banks

    banks = load_banks(banks_dir)
    missing = [t for t in targets if t not in banks]
    if missing:
        raise ValueError(f"no prompt bank for target(s) {missing} in {banks_dir}")
    enc = get_encoder(encoder, weights)
    mats = []
    for target in targets:
        table = embed_bank(banks[target], enc, cache_dir=cache_dir)
        part = table[table["group"] == group]
        if part.empty:
            raise ValueError(
                f"the prompt bank of {target!r} in {banks_dir} has no {group!r} prompts"
            )
        mats.append(embedding_matrix(part))
    m = max(len(x) for x in mats)
    return np.stack([np.resize(x, (m, x.shape[1])) for x in mats]).astype(np.float32)


def curated_texts(banks_dir: Path | str, targets=TARGETS) -> list[list[str]]:
    """The curated prompt texts of each target, in ``targets`` order, each list repeated
    cyclically to the largest bank's length, as :func:`prompt_embeddings` repeats them."""
    from ..wsi.prompts import load_banks

    banks = load_banks(banks_dir)
    missing = [t for t in targets if t not in banks]
    if missing:
        raise ValueError(f"no prompt bank for target(s) {missing} in {banks_dir}")
    texts = [list(banks[t].curated) for t in targets]
    m = max(len(x) for x in texts)
    return [[row[i % len(row)] for i in range(m)] for row in texts]


def coop_text_tower(banks_dir: Path | str, encoder: str = "synthclip", weights=None):
    """CoOp's frozen text tower (:class:`~stromalens.models.TextTower`) of ``encoder`` with
    the curated prompts' tokens, the context initialised to
    :data:`~stromalens.models.COOP_CONTEXT_INIT`.

    ``ValueError`` when the encoder is image-only or not an open_clip CLIP (CoOp cannot run),
    or when the tower does not reproduce the encoder's own text embedding of
    "<init words> <prompt>" (a tokenizer other than open_clip's, say)."""
    import open_clip
    import torch

    from ..models import COOP_CONTEXT_INIT, TextTower
    from ..wsi.encoders import get_encoder

    enc = get_encoder(encoder, weights)
    if not enc.has_text:
        raise ValueError(
            f"CoOp (clip_mil_coop) learns context tokens through the text tower of the CLIP "
            f"encoder, and encoder {encoder!r} is image-only: use a CLIP encoder or leave "
            "clip_mil_coop out of training.models"
        )
    arch = enc.config.get("arch")
    clip = enc.model
    context = int(getattr(clip, "context_length", 77))
    tokenizer = open_clip.get_tokenizer(arch if isinstance(arch, str) else "ViT-B-32",
                                        context_length=context)  # fmt: skip
    texts = curated_texts(banks_dir)
    tower = TextTower.from_open_clip(clip, tokenizer, texts)
    with torch.no_grad():
        ours = tower(tower.context_init.expand(len(texts), -1, -1)).flatten(0, 1)
    theirs = enc.encode_texts([f"{COOP_CONTEXT_INIT} {t}" for row in texts for t in row])
    if not torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4 * float(theirs.abs().max())):
        raise ValueError(
            f"encoder {encoder!r}: the CoOp text tower does not reproduce the encoder's text "
            "embeddings (another tokenizer?); CoOp cannot run with this encoder"
        )
    return tower


def load_study_data(
    manifest: Path | str,
    targets: Path | str,
    features_dir: Path | str | None = None,
    radiomics_dir: Path | str | None = None,
    prompts: np.ndarray | None = None,
    max_tiles: int | None = None,
    seed: int = 0,
    text=None,
) -> StudyData:
    """Assemble a :class:`StudyData` from the stages' outputs (``text``: CoOp's text tower,
    :func:`coop_text_tower`, or None).

    ``targets`` is ``targets.parquet`` (index patient_id; TARGETS columns); the gene table the
    targets stage writes beside it (:func:`~stromalens.rundir.gene_table`) and its S_LR inputs
    (:func:`~stromalens.rundir.lr_inputs`; each fold refits ``lr`` from them) are read when
    present; without the latter the folds train on the table's ``lr`` column, which is
    logged once; ``features_dir`` holds
    one HDF5 per patient; ``radiomics_dir`` holds ``radiomics.parquet`` (and, optionally,
    ``perturbations.parquet`` for the in-fold ICC filter). Patients without targets are dropped.
    """
    from ..cohort import load_manifest
    from ..rundir import gene_table, lr_inputs

    loaded = load_manifest(manifest)
    cohort = loaded.frame
    table = pd.read_parquet(targets)
    missing = [t for t in TARGETS if t not in table.columns]
    if missing:
        raise ValueError(f"{targets}: target column(s) {missing} missing")
    table.index = table.index.astype(str)
    patients = [str(p) for p in cohort.index if str(p) in table.index]
    if not patients:
        raise ValueError(f"no patient of {manifest} has targets in {targets}")
    sites = cohort.loc[patients, "site"].astype(str).to_numpy()
    bags = (
        read_bags(features_dir, patients, max_tiles, seed, loaded.slide_ids())
        if features_dir
        else {}
    )
    radiomics = pd.DataFrame(index=patients)
    perturbations = None
    if radiomics_dir is not None:
        radiomics_dir = Path(radiomics_dir)
        radiomics = pd.read_parquet(radiomics_dir / "radiomics.parquet")
        radiomics.index = radiomics.index.astype(str)
        radiomics = radiomics.select_dtypes("number")
        pert = radiomics_dir / "perturbations.parquet"
        if pert.is_file():
            perturbations = pd.read_parquet(pert)
    genes = None
    if gene_table(targets).is_file():
        genes = pd.read_parquet(gene_table(targets))
        genes.index = genes.index.astype(str)
    inputs, record = _read_lr_inputs(lr_inputs(targets), table, targets)
    data = StudyData(
        patients=patients,
        sites=sites,
        bags=bags,
        radiomics=radiomics,
        targets=table.loc[patients, list(TARGETS)].astype(float),
        prompts=prompts,
        perturbations=perturbations,
        text=text,
        genes=genes,
        lr_inputs=inputs,
        meta={"lr_inputs": record},
    )
    event(
        log,
        "study data loaded",
        patients=len(patients),
        slides=len(bags),
        radiomics=int(data.radiomics.notna().any(axis=1).sum()),
        features=data.radiomics.shape[1],
        genes=0 if genes is None else genes.shape[1],
    )
    return data


def _read_lr_inputs(path: Path, table: pd.DataFrame, targets) -> tuple[LRInputs | None, dict]:
    """The S_LR inputs at ``path`` checked against the targets ``table`` (they must cover its
    patients with an ``lr`` value and reproduce that column when fitted as the targets stage
    fitted them), and a record of them for the checkpoint digests; ``(None, record)`` when
    there is no such file."""
    from ..hashing import sha256_file
    from ..targets.io import read_lr_inputs

    if not path.is_file():
        event(
            log,
            "S_LR's gene scaling is not refitted per fold: no LR inputs beside the targets "
            "(an older run, or targets from elsewhere); every fold trains on the table's lr "
            "column, whose scaling saw the held-out patients",
            logging.WARNING,
            missing=str(path),
        )
        return None, {"per_fold": False}
    inputs = read_lr_inputs(path)
    known = table.index[table["lr"].notna()]
    absent = [p for p in known if p not in inputs.log_expr.index]
    if absent:
        raise ValueError(
            f"{path} lacks {len(absent)} patients of {targets} (e.g. {', '.join(absent[:5])}): "
            "the two files come from different runs; rerun `stromalens targets`"
        )
    recomputed = inputs.score(inputs.fit(inputs.fitted_on), list(known))
    gap = float(np.nanmax(np.abs(recomputed.to_numpy() - table.loc[known, "lr"].to_numpy())))
    if not gap <= 1e-9 * max(1.0, float(table["lr"].abs().max())):
        raise ValueError(
            f"{path} does not reproduce the lr column of {targets} (largest difference "
            f"{gap:.3g}): the two files come from different runs; rerun `stromalens targets`, "
            f"or remove {path.name} to train on the table's column"
        )
    record = {"per_fold": True, "sha256": sha256_file(path), "method": inputs.method}
    event(log, "S_LR refitted per fold", method=inputs.method, genes=inputs.log_expr.shape[1])
    return inputs, record


# ---------------------------------------------------------------------------- preprocessing
@dataclass
class FoldArrays:
    """A fold's patients, transformed: the inputs of :func:`make_batch`."""

    patients: list[str]
    bags: list[np.ndarray | None]
    rad: np.ndarray  # (P, R) standardised, 0 where missing
    has_rad: np.ndarray  # (P,) bool
    site: np.ndarray  # (P,) int codes
    y: np.ndarray  # (P, J) z-scored targets, NaN unknown
    y01: np.ndarray  # (P, J) min–max scaled targets, NaN unknown
    tile_dim: int | None = None  # D of the tile embeddings, known even when no bag is here
    genes: np.ndarray | None = None  # (P, G) z-scored log-expression, NaN unknown; or None
    _digest: str | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.patients)

    def digest(self) -> str:
        """sha256 of everything a fit reads from these arrays: the patient ids, every bag's
        tiles, the radiomics, their presence flags, the site codes, both target scalings and
        the z-scored genes (computed once; the arrays are not changed after the preprocessor
        made them)."""
        if self._digest is None:
            h = hashlib.sha256()
            h.update("\x1f".join(map(str, self.patients)).encode())
            for bag in self.bags:
                # the shape first, so bags that split differently never hash alike
                h.update(b"-" if bag is None else repr(bag.shape).encode())
                if bag is not None:
                    h.update(np.ascontiguousarray(bag).tobytes())
            genes = () if self.genes is None else (self.genes,)
            for part in (self.rad, self.has_rad, self.site, self.y, self.y01, *genes):
                part = np.ascontiguousarray(part)
                h.update(f"{part.dtype}{part.shape}".encode())
                h.update(part.tobytes())
            self._digest = h.hexdigest()
        return self._digest


class FoldPreprocessor:
    """Everything fitted from data, fitted on a fold's training patients only.

    Parameters
    ----------
    harmonise : bool
        ComBat site harmonisation of the radiomics (fitted on the training patients).
    icc_threshold : float or None
        Keep radiomics features with perturbation ICC ≥ threshold among the training patients
        (needs the perturbation table; skipped when absent or None).
    min_present : float
        Drop radiomics features present (non-NaN) in fewer than this share of training patients.
    rad_components : int or None
        Replace the standardised radiomics by k components fitted on the training patients,
        each scaled to unit SD: with ~100 patients and hundreds of correlated features, an MLP
        on the raw features overfits. None keeps the features.
    rad_reduction : {"pca", "pls"}
        How the k components are found: principal components (unsupervised; SVD; the default,
        as in :class:`~stromalens.training.TrainSettings`) or partial least squares against the
        training patients' z-scored targets (supervised; NIPALS, Wold 1975, via scikit-learn's
        ``PLSRegression``).

    Attributes (set by ``fit``)
    ---------------------------
    features_ : list of kept radiomics features
    combat_ : fitted :class:`~stromalens.radiology.ComBat` or None
    rad_mean_, rad_scale_ : Series, the standardisation of the (harmonised) features
    rad_components_ : (F, k) array or None, the projection of the standardised features
        (PLS ``x_rotations_`` or principal axes); rad_component_scale_ : (k,) the SDs of the
        training patients' scores (so each component enters with unit SD)
    lr_ : :class:`~stromalens.targets.lr.LRCrosstalk` with its gene scaling fitted on the
        training patients (:func:`fit_fold_lr`), or None when the study has no S_LR inputs;
        ``transform`` rescores ``lr`` with it (:func:`fold_targets`) before the z-scoring
    target_scaler_ : fitted :class:`~stromalens.targets.scaling.TargetScaler` (of the
        fold's targets)
    y_min_, y_max_ : Series, the min–max scaling of stage I
    gene_mean_, gene_scale_ : Series or None, the standardisation of the gene table's
        log-expression (HE2RNA's gene layer), None without a table
    sites_ : list of site labels (their codes are positions in this list)
    """

    def __init__(
        self,
        harmonise: bool = True,
        icc_threshold: float | None = 0.75,
        min_present: float = 0.5,
        rad_components: int | None = None,
        rad_reduction: str = "pca",
    ) -> None:
        if rad_components is not None and rad_components < 1:
            raise ValueError(f"rad_components must be ≥ 1 or None, got {rad_components}")
        if rad_reduction not in ("pls", "pca"):
            raise ValueError(f"rad_reduction must be 'pls' or 'pca', got {rad_reduction!r}")
        self.rad_reduction = rad_reduction
        self.harmonise = harmonise
        self.icc_threshold = icc_threshold
        self.min_present = min_present
        self.rad_components = rad_components

    @classmethod
    def for_settings(cls, harmonise: bool, icc_threshold: float | None, settings):
        """The preprocessor a run with these training ``settings`` fits on each fold."""
        return cls(
            harmonise,
            icc_threshold,
            rad_components=settings.rad_components,
            rad_reduction=settings.rad_reduction,
        )

    def fit(self, data: StudyData, train_ids) -> FoldPreprocessor:
        from ..targets.scaling import TargetScaler

        train_ids = list(train_ids)
        unknown = set(train_ids) - set(data.patients)
        if unknown:
            raise ValueError(f"training patients not in the study: {sorted(unknown)[:5]}")
        self.sites_ = sorted(set(data.sites))
        # S_LR first: the fold's lr is what the target scalings below are fitted on
        self.lr_ = fit_fold_lr(data, train_ids)
        y = fold_targets(data, train_ids, self.lr_)
        self.target_scaler_ = TargetScaler().fit(y)
        self.y_min_, self.y_max_ = y.min(), y.max()
        self._fit_genes(data, train_ids)

        rad = data.radiomics.loc[train_ids]
        rows = rad.notna().any(axis=1)
        rad = rad[rows]
        features = [c for c in rad.columns if rad[c].notna().mean() >= self.min_present]
        if features and self.icc_threshold is not None and data.perturbations is not None:
            from ..radiology import select_stable

            stable = set(
                select_stable(data.perturbations, threshold=self.icc_threshold, patients=train_ids)
            )
            features = [c for c in features if c in stable]
        rad = rad[features]
        if features:
            sd = rad.std(ddof=1)
            features = [c for c in features if np.isfinite(sd[c]) and sd[c] > 1e-12]
            rad = rad[features]
        self.features_ = features
        self.fill_ = rad.mean()
        rad = rad.fillna(self.fill_)
        self.combat_ = None
        site_of = data.site_of()
        if self.harmonise and features and len(rad) > 2:
            from ..radiology import ComBat

            counts = site_of.loc[rad.index].value_counts()
            # ComBat estimates a location and a scale per site: a site needs ≥ 2 training
            # patients. Sites with one are left out of the fit and, like unseen sites, get the
            # pooled standardisation.
            fitted = site_of.loc[rad.index].isin(counts.index[counts >= 2]).to_numpy()
            if (counts >= 2).sum() >= 2:
                self.combat_ = ComBat(unseen_site="pooled").fit(
                    rad[fitted], site_of.loc[rad.index[fitted]]
                )
                rad = self.combat_.transform(rad, site_of.loc[rad.index])
        self.rad_mean_ = rad.mean() if features else pd.Series(dtype=float)
        sd = rad.std(ddof=1) if features else pd.Series(dtype=float)
        self.rad_scale_ = sd.where(sd > 1e-12, 1.0)
        self.rad_components_ = self.rad_component_scale_ = None
        if self.rad_components is not None and features and len(rad) > 2:
            z = ((rad - self.rad_mean_) / self.rad_scale_).to_numpy(np.float64)
            k = min(self.rad_components, *z.shape)
            if self.rad_reduction == "pls":
                from sklearn.cross_decomposition import PLSRegression

                y_z = self.target_scaler_.transform(y.loc[rad.index]).to_numpy(np.float64)
                ok = np.isfinite(y_z).all(axis=1)
                pls = PLSRegression(k, scale=False).fit(z[ok], y_z[ok])
                axes = pls.x_rotations_  # (F, k): scores = (Z − mean) R; Z is centred already
            else:
                # SVD of the standardised matrix Z = U S Vᵀ; signs fixed (largest loading
                # positive) so a fold's axes do not flip between runs.
                _, _, vt = np.linalg.svd(z, full_matrices=False)
                axes = vt[:k].T
                axes = axes * np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(k)])
            scale = (z @ axes).std(axis=0, ddof=1)
            keep = scale > 1e-9
            self.rad_components_, self.rad_component_scale_ = axes[:, keep], scale[keep]
        return self

    def _fit_genes(self, data: StudyData, train_ids) -> None:
        """The gene table's standardisation on the training patients (genes constant there
        are dropped): z = (g − mean) / SD (ddof = 1)."""
        self.gene_mean_ = self.gene_scale_ = None
        if data.genes is None:
            return
        g = data.genes.loc[train_ids]
        sd = g.std(ddof=1)
        keep = sd.index[np.isfinite(sd) & (sd > 1e-12)]
        self.gene_mean_, self.gene_scale_ = g[keep].mean(), sd[keep]

    def transform_genes(self, data: StudyData, ids) -> np.ndarray | None:
        """(P, G) z-scored log-expression of ``ids`` (NaN unknown), or None without a table."""
        self._check()
        if getattr(self, "gene_mean_", None) is None or data.genes is None:
            return None
        g = data.genes.reindex(columns=self.gene_mean_.index).loc[list(ids)]
        return ((g - self.gene_mean_) / self.gene_scale_).to_numpy(np.float32)

    def _check(self) -> None:
        if not hasattr(self, "features_"):
            raise RuntimeError("FoldPreprocessor is not fitted; call fit() on the training fold")

    def transform_radiomics(self, data: StudyData, ids) -> tuple[np.ndarray, np.ndarray]:
        self._check()
        ids = list(ids)
        raw = data.radiomics.reindex(columns=self.features_).loc[ids]
        has = raw.notna().any(axis=1).to_numpy() if self.features_ else np.zeros(len(ids), bool)
        if not self.features_:
            return np.zeros((len(ids), 1), np.float32), has
        x = raw.fillna(self.fill_)
        if self.combat_ is not None:
            x = self.combat_.transform(x, data.site_of().loc[ids])
        x = ((x - self.rad_mean_) / self.rad_scale_).to_numpy(np.float64)
        if self.rad_components_ is not None:
            x = (x @ self.rad_components_) / self.rad_component_scale_  # (P, k)
        x = x.astype(np.float32)
        x[~has] = 0.0
        return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), has

    def transform(self, data: StudyData, ids) -> FoldArrays:
        self._check()
        ids = list(ids)
        rad, has_rad = self.transform_radiomics(data, ids)
        # a state saved before lr_ existed has none: the table's column, as it was trained on
        y_raw = fold_targets(data, ids, getattr(self, "lr_", None))
        y = self.target_scaler_.transform(y_raw).to_numpy(np.float32)
        y01 = ((y_raw - self.y_min_) / (self.y_max_ - self.y_min_ + EPS)).to_numpy(np.float32)
        codes = {s: i for i, s in enumerate(self.sites_)}
        site = np.array([codes.get(s, -1) for s in data.site_of().loc[ids]], np.int64)
        return FoldArrays(
            patients=ids,
            bags=[data.bags.get(p) for p in ids],
            rad=rad,
            has_rad=has_rad,
            site=site,
            y=y,
            y01=y01,
            tile_dim=data.tile_dim if (data.bags or data.prompts is not None) else None,
            genes=self.transform_genes(data, ids),
        )

    def inverse_targets(self, z: np.ndarray) -> np.ndarray:
        """z-scored predictions (P, J) back to target units."""
        self._check()
        scale = self.target_scaler_.scale_[list(TARGETS)].to_numpy()
        mean = self.target_scaler_.mean_[list(TARGETS)].to_numpy()
        return z * scale + mean

    def state(self) -> dict:
        """The fitted state as JSON-able data, exact to the bit (:mod:`stromalens.state`): the
        settings and every learned attribute, the fitted ComBat and target scaler included.
        ``FoldPreprocessor.from_state(p.state())`` transforms as ``p`` does."""
        from ..state import encode

        self._check()
        return {
            "estimator": "FoldPreprocessor",
            "version": STATE_VERSION,
            "state": encode(vars(self)),
        }

    @classmethod
    def from_state(cls, state: dict) -> FoldPreprocessor:
        """The fitted preprocessor saved by :meth:`state` (no data needed)."""
        from ..state import restore

        if state.get("estimator") != "FoldPreprocessor" or state.get("version") != STATE_VERSION:
            raise ValueError(
                f"not a FoldPreprocessor state of version {STATE_VERSION}: "
                f"{state.get('estimator')!r} version {state.get('version')!r}"
            )
        return restore(cls, state["state"])


def make_batch(arrays: FoldArrays, index=None, max_tiles: int | None = None, rng=None):
    """A padded :class:`~stromalens.models.MILBatch` of ``arrays`` rows ``index``.

    ``max_tiles`` (training only) samples at most that many tiles per bag with ``rng``."""
    import torch

    from ..models import MILBatch

    index = np.arange(len(arrays)) if index is None else np.asarray(index)
    bags = []
    for i in index:
        bag = arrays.bags[i]
        if bag is not None and max_tiles is not None and len(bag) > max_tiles:
            bag = bag[np.sort(rng.choice(len(bag), max_tiles, replace=False))]
        bags.append(bag)
    # the tile dimension from any bag, else from the study (a batch with no slide at all)
    d = next((b.shape[1] for b in arrays.bags if b is not None), arrays.tile_dim or 1)
    n = max([len(b) for b in bags if b is not None] + [1])
    tiles = np.zeros((len(index), n, d), np.float32)  # (B, N, D)
    mask = np.zeros((len(index), n), bool)  # (B, N)
    for row, bag in enumerate(bags):
        if bag is not None:
            tiles[row, : len(bag)] = bag
            mask[row, : len(bag)] = True
    return MILBatch(
        tiles=torch.from_numpy(tiles),
        mask=torch.from_numpy(mask),
        rad=torch.from_numpy(arrays.rad[index]),
        has_wsi=torch.from_numpy(mask.any(1)),
        has_rad=torch.from_numpy(arrays.has_rad[index]),
        site=torch.from_numpy(arrays.site[index]),
        genes=None if arrays.genes is None else torch.from_numpy(arrays.genes[index]),
    )
