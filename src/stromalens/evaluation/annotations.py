"""The pathologist's slide annotations, read from GeoJSON and rasterised onto the tile grid.

A slide's annotations are QuPath GeoJSON in level-0 pixel coordinates: a ``Fibrosis``
(Multi)Polygon, holes allowed, and ``Immune exclusion`` (Multi)Points (as
``stromalens.synthetic.annotations`` writes them). :func:`read_annotations` reads them into
:class:`Annotations`; :func:`load_patient_annotations` finds a patient's file through the cohort
manifest.

Raster. Areas are measured on one raster per slide whose cells are ``c = tile_px /
subdivisions`` level-0 px wide, with its origin at the top-left tile corner
(:class:`TileRaster`). A tile covers the ``tile_px / c`` × ``tile_px / c`` block of cells
starting at its corner, snapped to the nearest cell (so by at most ``c / 2`` px). A cell belongs
to a polygon when its *centre* lies inside it by the even–odd rule, holes outside
(:func:`rasterise_polygons`); a point belongs to the cell that contains it
(:meth:`TileRaster.point_atoms`).

Example
-------
>>> ann = read_annotations("annotations/P001.geojson")                 # doctest: +SKIP
>>> grid = TileRaster.build(x, y, tile_px=256, subdivisions=8)         # doctest: +SKIP
>>> mask = rasterise_polygons(ann.polygons, grid.origin, grid.cell, grid.shape)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

#: QuPath classification names of the annotations (``stromalens.synthetic.annotations``).
FIBROSIS_NAME = "Fibrosis"
EXCLUSION_NAME = "Immune exclusion"
#: Largest raster (cells) built for one slide; lower ``subdivisions`` for bigger slides.
MAX_RASTER_CELLS = 60_000_000


# --------------------------------------------------------------------------- GeoJSON
@dataclass(frozen=True)
class Annotations:
    """A slide's pathologist annotations in level-0 px.

    ``polygons``: each polygon a list of rings (``(n, 2)`` arrays of x, y), the exterior first,
    then its holes. ``points``: ``(m, 2)`` immune-exclusion points.
    """

    polygons: list[list[np.ndarray]] = field(default_factory=list)
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))


def _class_name(properties: dict | None) -> str:
    cls = (properties or {}).get("classification")
    if isinstance(cls, dict):
        cls = cls.get("name")
    return str(cls or "").strip().lower()


def _features(data, path: Path) -> list:
    """The features of a FeatureCollection, a single Feature or a list of Features."""
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        return data.get("features") or []
    if isinstance(data, dict) and data.get("type") == "Feature":
        return [data]
    if isinstance(data, list):
        return data
    raise ValueError(f"{path} is not a GeoJSON FeatureCollection, Feature or feature list")


def _add_geometry(name: str, kind, coords, polygons: list, points: list) -> None:
    """Append a ``Fibrosis`` geometry's polygons or an ``Immune exclusion`` one's points."""
    if name == FIBROSIS_NAME.lower() and kind in ("Polygon", "MultiPolygon"):
        for poly in [coords] if kind == "Polygon" else coords:
            rings = [np.asarray(r, float).reshape(-1, 2) for r in poly]
            rings = [r for r in rings if len(r) >= 3]
            if rings:
                polygons.append(rings)
    elif name == EXCLUSION_NAME.lower() and kind in ("Point", "MultiPoint"):
        points.append(np.asarray(coords, float).reshape(-1, 2))


def read_annotations(path: Path | str) -> Annotations:
    """Read QuPath GeoJSON: ``Fibrosis`` (Multi)Polygons and ``Immune exclusion`` (Multi)Points.

    Accepts a FeatureCollection, a single Feature or a list of Features; class names are matched
    case-insensitively; other classes and geometries are ignored. Rings of fewer than three
    vertices are dropped.

    Parameters
    ----------
    path : a GeoJSON file.

    Returns
    -------
    :class:`Annotations` in the file's (level-0 px) coordinates.

    Raises
    ------
    ValueError
        For a file that cannot be read, is not GeoJSON, or has malformed coordinates.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read annotations {path}: {exc}") from None
    polygons: list[list[np.ndarray]] = []
    points: list[np.ndarray] = []
    for feature in _features(data, path):
        if not isinstance(feature, dict) or not isinstance(feature.get("geometry"), dict):
            continue
        name = _class_name(feature.get("properties"))
        kind = feature["geometry"].get("type")
        coords = feature["geometry"].get("coordinates")
        try:
            _add_geometry(name, kind, coords, polygons, points)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: malformed {kind} coordinates of '{name}': {exc}") from None
    pts = np.concatenate(points) if points else np.zeros((0, 2))
    return Annotations(polygons=polygons, points=pts)


def resolve_path(value, manifest_dir: Path | str | None) -> Path | None:
    """A manifest cell as a path: None when empty or missing, relative to ``manifest_dir``."""
    if value is None or (not isinstance(value, str | Path) and pd.isna(value)):
        return None
    if isinstance(value, str) and not value.strip():
        return None
    path = Path(value).expanduser()
    if not path.is_absolute() and manifest_dir is not None:
        path = Path(manifest_dir) / path
    return path


def load_patient_annotations(
    frame: pd.DataFrame, pid: str, manifest_dir: Path | str | None, cache: dict
) -> tuple[Annotations | None, str]:
    """A patient's annotations from the manifest's ``annotations`` column, or why there are none.

    Parameters
    ----------
    frame : manifest frame indexed by ``patient_id`` (as ``str``).
    pid : the patient.
    manifest_dir : directory relative annotation paths are resolved against.
    cache : resolved path → ``(annotations, reason)``; filled in, so that a file shared by
        several slides is read once.

    Returns
    -------
    ``(annotations, "")``, or ``(None, reason)`` when the patient is not in the manifest, has
    no annotation path, the file is missing, or it cannot be read (:func:`read_annotations`).
    """
    if pid not in frame.index:
        return None, "patient not in the manifest"
    if "annotations" not in frame.columns:
        return None, "manifest has no 'annotations' column"
    path = resolve_path(frame.at[pid, "annotations"], manifest_dir)
    if path is None:
        return None, "no annotations"
    if path not in cache:
        if not path.is_file():
            cache[path] = (None, f"annotations not found: {path}")
        else:
            try:
                cache[path] = (read_annotations(path), "")
            except ValueError as exc:
                cache[path] = (None, str(exc))
    return cache[path]


# --------------------------------------------------------------------------- raster
def rasterise_polygons(
    polygons: list[list[np.ndarray]],
    origin: tuple[float, float],
    cell: float,
    shape: tuple[int, int],
) -> np.ndarray:
    """Boolean ``(rows, cols)`` mask of the cells whose centre lies inside the polygons.

    Cell ``(r, c)`` has its centre at

        (x, y) = origin + ((c + ½)·cell, (r + ½)·cell).

    Inside is the even–odd rule per polygon (exterior ring and holes together, so holes are
    outside), and the union over polygons; a centre exactly on a left or top edge counts as
    inside, on a right or bottom edge as outside (half-open, so tiled polygons never share a
    cell). Each row is scanned once: an edge crossing the row's centre line at ``x`` toggles
    every cell with centre ``≥ x``.

    Example
    -------
    >>> square = [np.array([[0, 0], [4, 0], [4, 4], [0, 4]])]
    >>> int(rasterise_polygons([square], (0, 0), 1.0, (5, 5)).sum())
    16
    """
    rows, cols = int(shape[0]), int(shape[1])
    mask = np.zeros((rows, cols), bool)
    ox, oy = float(origin[0]), float(origin[1])
    for rings in polygons:
        starts, ends = [], []
        for ring in rings:
            ring = (np.asarray(ring, float).reshape(-1, 2) - (ox, oy)) / cell - 0.5
            if not np.array_equal(ring[0], ring[-1]):
                ring = np.vstack([ring, ring[:1]])
            starts.append(ring[:-1])
            ends.append(ring[1:])
        a, b = np.concatenate(starts), np.concatenate(ends)  # (E, 2) edges in cell units
        lo, hi = np.minimum(a[:, 1], b[:, 1]), np.maximum(a[:, 1], b[:, 1])
        # Rows whose centre y (an integer r) satisfies lo ≤ r < hi.
        r0 = np.clip(np.ceil(lo), 0, rows).astype(np.int64)
        r1 = np.clip(np.ceil(hi), 0, rows).astype(np.int64)
        span = r1 - r0
        keep = span > 0
        if not keep.any():
            continue
        a, b, r0, span = a[keep], b[keep], r0[keep], span[keep]
        edge = np.repeat(np.arange(len(a)), span)
        offset = np.arange(span.sum()) - np.repeat(np.cumsum(span) - span, span)
        r = r0[edge] + offset
        t = (r - a[edge, 1]) / (b[edge, 1] - a[edge, 1])
        x = a[edge, 0] + t * (b[edge, 0] - a[edge, 0])
        # Crossing at x toggles every cell whose centre c ≥ x.
        first = np.clip(np.ceil(x), 0, cols).astype(np.int64)
        toggles = np.zeros((rows, cols + 1), np.int32)
        np.add.at(toggles, (r, first), 1)
        mask |= (np.cumsum(toggles, axis=1)[:, :cols] % 2).astype(bool)
    return mask


def _atoms(spans: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(atom_of_cell, atom_cells)``: cells covered by exactly the same tiles share an atom."""
    # Zobrist signature: each cell XORs a random 64-bit key per covering tile.
    keys = np.random.default_rng(0).integers(1, 2**63 - 1, len(spans), dtype=np.int64)
    signature = np.zeros(shape, np.int64)
    coverage = np.zeros(shape, np.int32)
    for i, (ra, rb, ca, cb) in enumerate(spans):
        signature[ra:rb, ca:cb] ^= keys[i]
        coverage[ra:rb, ca:cb] += 1
    covered = coverage > 0
    atom_of_cell = np.full(shape, -1, np.int64)
    _, inverse, counts = np.unique(signature[covered], return_inverse=True, return_counts=True)
    atom_of_cell[covered] = inverse
    return atom_of_cell, counts


def _membership(spans: np.ndarray, atom_of_cell: np.ndarray, n_atoms: int):
    """``(A, N)`` sparse 0/1 matrix: atom ``a`` lies in tile ``i``."""
    from scipy import sparse

    rows, cols = [], []
    for i, (ra, rb, ca, cb) in enumerate(spans):
        atoms = np.unique(atom_of_cell[ra:rb, ca:cb])
        atoms = atoms[atoms >= 0]
        rows.append(atoms)
        cols.append(np.full(len(atoms), i))
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    return sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_atoms, len(spans)))


@dataclass
class TileRaster:
    """A slide's tiles on a raster, with the cells grouped into *atoms*.

    An atom is the set of cells covered by exactly the same tiles (for non-overlapping tiles,
    one atom per tile); metrics of any tile selection need only per-atom counts.

    Attributes
    ----------
    origin, cell, shape : level-0 origin, cell side (px) and ``(rows, cols)`` of the raster.
    spans : ``(N, 4)`` int cell bounds of each tile, ``r0, r1, c0, c1`` (half-open).
    atom_of_cell : ``(rows, cols)`` int atom index, −1 outside every tile.
    atom_cells : ``(A,)`` cells of each atom.
    membership : ``(A, N)`` sparse 0/1, atom ``a`` lies in tile ``i``.
    """

    origin: tuple[float, float]
    cell: float
    shape: tuple[int, int]
    spans: np.ndarray
    atom_of_cell: np.ndarray
    atom_cells: np.ndarray
    membership: object

    @property
    def n_tiles(self) -> int:
        return len(self.spans)

    @classmethod
    def build(cls, x, y, tile_px, subdivisions: int = 8) -> TileRaster:
        """Raster of tiles with level-0 top-left corners ``x, y`` and sides ``tile_px``.

        The cell side is ``min(tile_px) / subdivisions``; raises :class:`ValueError` for
        ``subdivisions < 1`` or a raster over :data:`MAX_RASTER_CELLS` cells.
        """
        x, y = np.asarray(x, float), np.asarray(y, float)
        side = np.broadcast_to(np.asarray(tile_px, float), x.shape)
        if int(subdivisions) < 1:
            raise ValueError(f"subdivisions must be ≥ 1, got {subdivisions!r}")
        cell = float(side.min()) / int(subdivisions)
        origin = (float(x.min()), float(y.min()))
        c0 = np.round((x - origin[0]) / cell).astype(np.int64)
        r0 = np.round((y - origin[1]) / cell).astype(np.int64)
        n = np.maximum(1, np.round(side / cell).astype(np.int64))
        spans = np.stack([r0, r0 + n, c0, c0 + n], axis=1)
        shape = (int(spans[:, 1].max()), int(spans[:, 3].max()))
        if shape[0] * shape[1] > MAX_RASTER_CELLS:
            raise ValueError(
                f"a raster of {shape[0]}×{shape[1]} cells is too large; lower subdivisions "
                f"(now {subdivisions})"
            )
        atom_of_cell, atom_cells = _atoms(spans, shape)
        membership = _membership(spans, atom_of_cell, len(atom_cells))
        return cls(origin, cell, shape, spans, atom_of_cell, atom_cells, membership)

    def atom_sums(self, mask: np.ndarray) -> np.ndarray:
        """``(A,)`` number of cells of each atom inside a ``shape`` boolean mask."""
        inside = self.atom_of_cell[mask & (self.atom_of_cell >= 0)]
        return np.bincount(inside, minlength=len(self.atom_cells))

    def point_atoms(self, points: np.ndarray) -> np.ndarray:
        """Atom of each level-0 point (the cell containing it), −1 outside the tiled area."""
        points = np.asarray(points, float).reshape(-1, 2)
        col = np.floor((points[:, 0] - self.origin[0]) / self.cell).astype(np.int64)
        row = np.floor((points[:, 1] - self.origin[1]) / self.cell).astype(np.int64)
        ok = (row >= 0) & (row < self.shape[0]) & (col >= 0) & (col < self.shape[1])
        atoms = np.full(len(points), -1, np.int64)
        atoms[ok] = self.atom_of_cell[row[ok], col[ok]]
        return atoms

    def covered_atoms(self, selected: np.ndarray) -> np.ndarray:
        """``(A,)`` bool (or ``(A, B)`` for ``(N, B)`` selections): atom in a selected tile."""
        return np.asarray(self.membership @ np.asarray(selected, float)) > 0
