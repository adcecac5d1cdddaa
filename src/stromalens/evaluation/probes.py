"""Probes of the trained fold models: what the evaluation needs beyond the out-of-fold
predictions, computed by reloading each outer fold's checkpoints.

Each fold's models and its fitted :class:`~stromalens.training.data.FoldPreprocessor` come from
the run's model bundle (``TRAIN/model/``, :mod:`stromalens.training.bundle`), exactly as
training left them; nothing is re-fitted. Then, on the fold's held-out patients only:

* **missing modalities** — predictions with a random share of each slide's tiles removed
  (0, 20, …, 100 %; at 100 % the slide is absent) and with MRI sequences removed (0, 1, 2 or
  all 3 of T1/T2/CE; every combination; a removed sequence's features are missing and take the
  training mean, as any missing value does; with all three removed the patient has no MRI);
* **gate shares** of the gated fusion (stage III + CORAL): each branch's share of the fused
  representation h = g ⊙ [z_rad; z_wsi], ‖h_wsi‖² / ‖h‖² and ‖h_rad‖² / ‖h‖² (summing to 1;
  :mod:`~stromalens.evaluation.gates`), beside the mean raw gate value of each half;
* **fused embeddings** before (``fusion_no_coral``) and after (``fusion``) CORAL — of each
  fold's held-out patients by that fold's model (embeddings of different folds live in
  different spaces; training patients are left out because CORAL aligned them directly);
* **tile attention** of the fusion and WSI models with each tile's level-0 position, for the
  co-localisation with the pathologist's annotations;
* **inference cost** of the teacher (fusion) and the MRI-only student: time per patient, and
  peak resident memory of a fresh process that loads the model and its inputs and predicts.

The prompt perturbation is no probe: training retrains the CLIP-guided WSI model with each
prompt set (:mod:`stromalens.training.prompt_sets`) and the evaluation reads those out-of-fold
predictions (:attr:`~stromalens.rundir.RunFiles.prompt_sets`). Swapping other text into the
CUR-trained model at inference, as an earlier version did here, tested how a fitted γ and head
react to unseen text, not what the study's analysis asks, and is gone.
"""

from __future__ import annotations

import dataclasses
import itertools
import time

import numpy as np
import pandas as pd

from ..logs import event, get_logger
from ..names import PROPOSED, TARGETS
from ..rundir import RunDirError, RunFiles, resolve_run_path
from ..training.data import StudyData

log = get_logger("evaluation.probes")

#: the models whose robustness to missing modalities is measured (study names)
MISSING_MODELS = (PROPOSED, "fusion_no_coral", "wsi_clip", "mri", "mri_student")
TILE_LEVELS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
SEQUENCES = ("t1", "t2", "ce")


# ---------------------------------------------------------------------------- loading
def prompt_source(run: RunFiles) -> tuple:
    """(prompt-bank directory, encoder, weights, text-embedding cache) the run trained with."""
    cfg = run.training
    return (
        resolve_run_path(cfg.get("prompts", "configs/prompts"), run.root),
        cfg.get("encoder", "synthclip"),
        cfg.get("encoder_weights"),
        cfg.get("prompt_cache") or run.root / "prompts",
    )


def load_data(run: RunFiles) -> StudyData:
    """The study data the run was trained on, from the paths in its ``config.yaml``."""
    from ..training.data import load_study_data, prompt_embeddings

    cfg = run.training
    prompts = prompt_embeddings(*prompt_source(run))
    seed = (cfg.get("settings") or {}).get("seed", 0)
    return load_study_data(
        run.manifest_path,
        run.targets_path,
        resolve_run_path(cfg.get("features"), run.root),
        resolve_run_path(cfg.get("radiomics"), run.root),
        prompts=prompts,
        max_tiles=cfg.get("max_tiles"),
        seed=seed,
    )


@dataclasses.dataclass
class Fold:
    """One outer fold of the run: its patients and the bundle's fitted preprocessor and models
    (:class:`~stromalens.training.bundle.BundleFold`)."""

    fold: int
    train_ids: list[str]
    test_ids: list[str]
    bundled: object  # BundleFold

    @property
    def prep(self):
        return self.bundled.prep

    def has(self, name: str) -> bool:
        return self.bundled.has(name)

    def load(self, name: str):
        return self.bundled.load(name)


def bundle_folds(run: RunFiles, data: StudyData) -> list[Fold]:
    """The run's outer folds with the bundle's fitted preprocessors and models."""
    from ..training.bundle import load_bundle

    if not (run.layout.bundle / "bundle.json").is_file():
        raise RunDirError(f"{run.layout.bundle} missing: the run was trained without a bundle")
    bundle = load_bundle(run.layout.bundle)
    known = set(data.patients)
    folds = []
    for bundled in bundle.folds:
        k = bundled.fold
        train_ids = [p for p in run.folds.index[run.folds != k] if p in known]
        test_ids = [p for p in run.folds.index[run.folds == k] if p in known]
        folds.append(Fold(k, train_ids, test_ids, bundled))
    return folds


def _predict_rows(model, arrays, fold: Fold, name: str, **extra) -> list[dict]:
    from ..training.curriculum import predict

    pred = fold.prep.inverse_targets(predict(model, arrays))
    truth = fold.prep.inverse_targets(arrays.y)
    rows = []
    for j, target in enumerate(TARGETS):
        for i, pid in enumerate(arrays.patients):
            rows.append(
                {
                    "fold": fold.fold,
                    "model": name,
                    "target": target,
                    "patient_id": pid,
                    "y_true": truth[i, j],
                    "y_pred": pred[i, j],
                    **extra,
                }
            )
    return rows


# ---------------------------------------------------------------------------- probes
def _drop_tiles(arrays, share: float, rng: np.random.Generator):
    bags = []
    for bag in arrays.bags:
        if bag is None or share >= 1.0:
            # an empty bag, not None: the batch keeps the tile dimension (no slide → masked)
            bags.append(None if bag is None else bag[:0])
            continue
        keep = max(1, int(round(len(bag) * (1.0 - share))))
        bags.append(bag[np.sort(rng.choice(len(bag), keep, replace=False))])
    return dataclasses.replace(arrays, bags=bags)


def missing_modalities(data: StudyData, fold: Fold, repeats: int = 3, seed: int = 0) -> list[dict]:
    """Prediction rows with tiles dropped (``modality="wsi"``) or sequences removed (``"mri"``);
    ``level`` is the share removed, ``repeat`` the draw (tiles) or the combination (MRI)."""
    rows: list[dict] = []
    arrays = fold.prep.transform(data, fold.test_ids)
    models = {m: fold.load(m) for m in MISSING_MODELS if fold.has(m)}
    for name, model in models.items():
        for level in TILE_LEVELS:
            n_rep = 1 if level in (0.0, 1.0) else repeats
            for rep in range(n_rep):
                rng = np.random.default_rng([seed, fold.fold, rep, int(level * 100)])
                dropped = _drop_tiles(arrays, level, rng)
                rows += _predict_rows(
                    model, dropped, fold, name, modality="wsi", level=level, repeat=rep
                )
    prefixes = [s for s in SEQUENCES if any(c.startswith(f"{s}__") for c in data.radiomics)]
    for n_removed in range(len(prefixes) + 1):
        for rep, removed in enumerate(itertools.combinations(prefixes, n_removed)):
            cols = [c for c in data.radiomics.columns if c.split("__")[0] in removed]
            radiomics = data.radiomics.copy()
            radiomics.loc[fold.test_ids, cols] = np.nan
            arrays_mri = fold.prep.transform(
                dataclasses.replace(data, radiomics=radiomics), fold.test_ids
            )
            level = n_removed / max(len(prefixes), 1)
            for name, model in models.items():
                rows += _predict_rows(
                    model, arrays_mri, fold, name, modality="mri", level=level, repeat=rep
                )
    return rows


def gate_rows(out, batch, patients: list[str], fold: int) -> list[dict]:
    """Per patient of one forward pass of the gated fusion: each branch's share of the fused
    representation h = g ⊙ [z_rad; z_wsi] (:func:`~stromalens.evaluation.gates.
    contribution_shares`), the mean raw gate value of each half, and which modalities the
    patient has."""
    from .gates import contribution_shares

    share_mri, share_wsi = contribution_shares(out.fused.numpy())  # (B,), (B,)
    g = out.gate.numpy()  # (B, 2H), MRI half first
    half = g.shape[1] // 2
    present = batch.wsi_present()
    return [
        {
            "fold": fold,
            "patient_id": pid,
            "share_mri": float(share_mri[row]),
            "share_wsi": float(share_wsi[row]),
            "gate_mri_mean": float(g[row, :half].mean()),
            "gate_wsi_mean": float(g[row, half:].mean()),
            "has_wsi": bool(present[row]),
            "has_mri": bool(batch.has_rad[row]),
        }
        for row, pid in enumerate(patients)
    ]


def gates_and_attention(
    data: StudyData, fold: Fold, tile_coords: dict[str, tuple]
) -> tuple[list[dict], list[pd.DataFrame]]:
    """Gate rows (:func:`gate_rows`) of the fusion model and
    tile-attention frames (fusion and ``wsi_clip``) for the fold's held-out patients."""
    import torch

    from ..training.data import make_batch

    arrays = fold.prep.transform(data, fold.test_ids)
    gates, attention = [], []
    for name in (PROPOSED, "wsi_clip", "clip_mil_none"):
        if not fold.has(name):
            continue
        model = fold.load(name)
        for start in range(0, len(arrays), 32):
            index = np.arange(start, min(start + 32, len(arrays)))
            batch = make_batch(arrays, index)
            with torch.no_grad():
                out = model(batch)
            if name == PROPOSED and out.gate is not None:
                gates += gate_rows(out, batch, [arrays.patients[i] for i in index], fold.fold)
            if out.attention is None:
                continue
            att = out.attention.numpy()
            if att.ndim == 2:
                att = att[:, None, :]
            for row, i in enumerate(index):
                pid = arrays.patients[i]
                if pid not in tile_coords or arrays.bags[i] is None:
                    continue
                coords, tile_px, slide_ids = tile_coords[pid]
                n = len(arrays.bags[i])
                for j in range(att.shape[1]):
                    attention.append(
                        pd.DataFrame(
                            {
                                "patient_id": pid,
                                "slide_id": slide_ids[:n],
                                "model": name,
                                "target": TARGETS[j] if att.shape[1] == len(TARGETS) else "all",
                                "x": coords[:n, 0],
                                "y": coords[:n, 1],
                                "tile_px": tile_px[:n],
                                "attention": att[row, j, :n],
                            }
                        )
                    )
    return gates, attention


def fused_embeddings(data: StudyData, fold: Fold) -> pd.DataFrame:
    """Fused representations of the fold's held-out patients by the fold's models
    before/after CORAL. Held-out only: CORAL aligned the training patients' site statistics
    directly, so their embedding would show the alignment it was fitted to, not whether it
    carries over to unseen patients."""
    import torch

    from ..training.data import make_batch

    arrays = fold.prep.transform(data, fold.test_ids)
    frames = []
    for name, stage in (("fusion_no_coral", "before"), (PROPOSED, "after")):
        if not fold.has(name):
            continue
        model = fold.load(name)
        with torch.no_grad():
            fused = np.concatenate(
                [
                    model(make_batch(arrays, np.arange(s, min(s + 64, len(arrays))))).fused.numpy()
                    for s in range(0, len(arrays), 64)
                ]
            )
        frame = pd.DataFrame(fused, columns=[f"e{i}" for i in range(fused.shape[1])])
        site_of = dict(zip(data.patients, data.sites, strict=True))
        frame.insert(0, "stage", stage)
        frame.insert(0, "site", [site_of[p] for p in arrays.patients])
        frame.insert(0, "patient_id", list(arrays.patients))
        frame.insert(0, "fold", fold.fold)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def held_out_rows(embeddings: pd.DataFrame, folds: pd.Series) -> pd.DataFrame:
    """The rows of ``embeddings`` (columns fold, patient_id, …) whose patient the fold's
    model did not train on: ``folds[patient_id] == fold`` (the run's ``folds.csv``). The site
    statistics and the 2-D map read only these."""
    fold_of = embeddings["patient_id"].map(folds)
    return embeddings[fold_of.to_numpy() == embeddings["fold"].to_numpy()]


def tile_positions(run: RunFiles, data: StudyData) -> dict[str, tuple]:
    """Level-0 top-left corners (n, 2) of the tiles in each patient's bag, in bag order, each
    tile's level-0 side (n,) and slide id (n,); the same pooled subset as
    :func:`~stromalens.training.data.read_patient_tiles` gives the model."""
    from ..training.data import read_patient_tiles

    cfg = run.training
    features = resolve_run_path(cfg.get("features"), run.root)
    seed = (cfg.get("settings") or {}).get("seed", 0)
    slides = run.slide_ids()
    out = {}
    for pid in data.bags:
        tiles = read_patient_tiles(
            features, pid, slides.get(pid, [pid]), cfg.get("max_tiles"), seed
        )
        if tiles is not None:
            out[pid] = (tiles.coords, tiles.tile_px, tiles.slide_ids)
    return out


# ---------------------------------------------------------------------------- inference cost
#: patients per batch in the memory measurement (the held-out patients, repeated)
MEMORY_BATCH = 256


def _peak_memory_child(conn, stem: str, arrays, batch: int) -> None:  # pragma: no cover
    """In a fresh process: load the model, build a ``batch``-patient input (the held-out
    patients repeated) and predict it in one pass under the torch profiler; send the input
    bytes and the peak of the allocator's timeline during the forward pass."""
    import os

    from ..executors import die_with_parent

    die_with_parent()  # ends with the evaluation if that is killed

    import numpy as np
    import torch

    from ..training.curriculum import load_checkpoint
    from ..training.data import make_batch

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # the profiler's start/stop lines are noise here
    torch.set_num_threads(1)
    model, _, _ = load_checkpoint(stem)
    inputs = make_batch(arrays, np.resize(np.arange(len(arrays)), batch))
    used = [inputs.tiles, inputs.mask, inputs.rad, inputs.has_wsi, inputs.has_rad]
    if getattr(model, "model_name", "") == "student":
        used = [inputs.rad, inputs.has_rad]  # the student reads the radiomics only
    input_bytes = sum(t.numel() * t.element_size() for t in used)
    with torch.autograd.profiler.profile(profile_memory=True, use_kineto=False) as prof:
        with torch.no_grad():
            model(inputs)
    steps = sorted(
        (e.time_range.start, e.self_cpu_memory_usage)
        for e in prof.function_events
        if e.self_cpu_memory_usage
    )
    peak = float(np.max(np.cumsum([v for _, v in steps]), initial=0.0))
    conn.send((input_bytes, peak))
    conn.close()


def inference_cost(data: StudyData, fold: Fold, repeats: int = 3) -> dict:
    """What the teacher (fusion: slide tiles + radiomics) and the MRI-only student cost at
    inference, on the fold's held-out patients.

    * seconds per patient: :func:`~stromalens.evaluation.distillation.time_inference` (a fixed
      batch, warm-up, the median of repeats; ``repeats`` is kept for callers and unused);
    * peak memory (MB) of one batch of :data:`MEMORY_BATCH` patients (the held-out patients
      repeated), in a fresh spawned process per model: the bytes of the inputs the model reads
      (tile bags and radiomics for the teacher, radiomics only for the student) plus the peak
      of torch's CPU allocations during the forward pass (the profiler's allocation timeline).
    """
    import multiprocessing as mp

    from .distillation import time_inference

    if not (fold.has(PROPOSED) and fold.has("mri_student")):
        return {}
    arrays = fold.prep.transform(data, fold.test_ids)
    mri_only = dataclasses.replace(arrays, bags=[None] * len(arrays))
    out = {}
    for name, inputs in (("teacher", arrays), ("student", mri_only)):
        registered = PROPOSED if name == "teacher" else "mri_student"
        # a fixed batch, warm-up, median of repeats (distillation.time_inference)
        out[f"{name}_seconds_per_patient"] = time_inference(fold.load(registered), inputs)
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        stem = str(fold.bundled.checkpoint(registered))
        proc = ctx.Process(target=_peak_memory_child, args=(child, stem, inputs, MEMORY_BATCH))
        proc.start()
        input_bytes, peak = parent.recv()
        proc.join()
        out[f"{name}_input_mb"] = input_bytes / 2**20
        out[f"{name}_peak_mb"] = (input_bytes + peak) / 2**20
    return out


def run_probes(
    run: RunFiles,
    data: StudyData | None = None,
    *,
    repeats: int = 3,
    seed: int = 0,
    cost: bool = True,
) -> dict[str, pd.DataFrame | dict]:
    """Every probe over every outer fold. Returns DataFrames ``missing``, ``gates``,
    ``attention``, ``embeddings`` and the dict ``cost`` (fold 0)."""
    data = data if data is not None else load_data(run)
    folds = bundle_folds(run, data)
    positions = tile_positions(run, data) if data.bags else {}
    missing, gates, attention, embeddings = [], [], [], []
    for fold in folds:
        started = time.perf_counter()
        missing += missing_modalities(data, fold, repeats, seed)
        g, a = gates_and_attention(data, fold, positions)
        gates += g
        attention += a
        embeddings.append(fused_embeddings(data, fold))
        event(log, "fold probed", fold=fold.fold, seconds=round(time.perf_counter() - started, 1))
    return {
        "missing": pd.DataFrame(missing),
        "gates": pd.DataFrame(gates),
        "attention": pd.concat(attention, ignore_index=True) if attention else pd.DataFrame(),
        "embeddings": pd.concat(embeddings, ignore_index=True),
        "cost": inference_cost(data, folds[0]) if cost else {},
    }
