"""Three-sequence MRI (T1, T2, contrast-enhanced T1) with a tumour mask.

The anatomy is rendered on a 1 mm isotropic grid, then acquired on the site's anisotropic grid
with a Gaussian slice profile (FWHM = slice thickness) and linear interpolation, so partial-volume
effects and resampling matter as in real data. The site's scanner then applies

    I_acquired = scale_s · (B(x) · I_true) + offset_s,   B = 1 + A · P(x)  (smooth bias field),

plus Rician noise (|I + n₁ + i n₂|, n ~ N(0, σ²); Gudbjartsson & Patz 1995, MRM 34:910).

The tumour is a lobulated ellipsoid whose volume is the patient's ``volume_cc``. Its interior
follows the latent biology: fibrous septa (T2-dark, moderately enhancing) whose extent grows with
ERS–CAF activity ``a``; enhancing inflamed regions that grow with crosstalk ``b``; and texture
whose amplitude rises and whose spatial scale shrinks with heterogeneity ``h``.

The MRI does not see the latents exactly. Each phenotype follows an *imaging-visible* latent

    ℓ_MRI = ρ_ℓ · ℓ + √(1 − ρ_ℓ²) · ν_ℓ,   ν_ℓ ~ N(0, 1) per patient,  ℓ ∈ {a, b, h},

with ρ = ``MRI_VISIBILITY``: septa also come from causes other than activated fibroblasts
(biopsy tracts, old haemorrhage, chondroid matrix), enhancement also reflects vascular
permeability unrelated to the crosstalk, and texture also reflects necrosis. Without ν the
radiomics read the latents almost perfectly (r ≈ 0.98 for ``a`` and ``h`` on the default cohort),
which no radiogenomic study has seen and which leaves the slides nothing to add; radiogenomic
correlations in the literature are moderate (e.g. Bodalal et al. 2019, Abdom Radiol 44:1960).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from .biology import SiteEffects

SEQUENCES: tuple[str, ...] = ("t1", "t2", "ce")

# Tissue intensities (arbitrary units, muscle ≈ 100 on T1) per sequence.
_INTENSITY = {
    #        fat   muscle bone  myxoid septa  enhancing-boost
    "t1": (300.0, 100.0, 220.0, 70.0, 95.0, 0.0),
    "t2": (250.0, 55.0, 120.0, 380.0, 110.0, -40.0),
    "ce": (300.0, 130.0, 250.0, 95.0, 170.0, 210.0),
}


#: ρ of each latent: the correlation of the MRI-visible latent with the planted one.
MRI_VISIBILITY: dict[str, float] = {"a": 0.9, "b": 0.75, "h": 0.9}


def mri_visible_latents(
    latents: dict[str, float], nuisance: np.ndarray, rho_scale: float = 1.0
) -> dict[str, float]:
    """ρ·ℓ + √(1 − ρ²)·ν for ℓ in (a, b, h), with ``nuisance`` = (ν_a, ν_b, ν_h).

    ``rho_scale`` multiplies every ρ: the stratum's MRI reliability under mechanism (b)
    (:func:`stromalens.synthetic.mechanisms.reliability_factors`); 1 is the base visibility.
    """
    if not 0.0 <= rho_scale <= 1.0:
        raise ValueError(f"rho_scale must be in [0, 1], got {rho_scale}")
    out = {}
    for name, nu in zip("abh", nuisance, strict=True):
        rho = rho_scale * MRI_VISIBILITY[name]
        out[name] = rho * float(latents[name]) + float(np.sqrt(1.0 - rho**2)) * float(nu)
    return out


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _resampling_matrix(n_in: int, coords: np.ndarray, sigma: float) -> np.ndarray:
    """Dense (len(coords) × n_in) matrix of Gaussian blur (σ in input voxels) then linear
    interpolation at ``coords`` (input-voxel units), both with edge clamping.

    Blur and interpolation are linear and separable, so acquiring a volume on a new grid is
    three small matrix products instead of a 3-D filter and a 3-D interpolation.
    """
    eye = np.eye(n_in)
    blurred = ndimage.gaussian_filter1d(eye, sigma, axis=0, mode="nearest") if sigma > 0 else eye
    coords = np.clip(coords, 0, n_in - 1)
    lo = np.floor(coords).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = (coords - lo)[:, None]
    return (1 - w) * blurred[lo] + w * blurred[hi]


def _apply_separable(volume: np.ndarray, matrices) -> np.ndarray:
    """Apply one matrix per axis: out[a,b,c] = Σ M0[a,z] M1[b,y] M2[c,x] v[z,y,x]."""
    out = np.tensordot(matrices[0], volume, axes=(1, 0))
    out = np.tensordot(matrices[1], out, axes=(1, 1)).swapaxes(0, 1)
    out = np.tensordot(out, matrices[2], axes=(2, 1))
    return out


def _smooth(shape, sigma_mm, rng) -> np.ndarray:
    """Unit-variance smooth Gaussian random field (1 mm voxels), drawn on a 2 mm grid."""
    coarse = tuple(int(np.ceil(n / 2)) + 1 for n in shape)
    f = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigma_mm / 2)
    mats = [
        _resampling_matrix(c, np.arange(n) / 2.0, 0.0) for c, n in zip(coarse, shape, strict=True)
    ]
    f = _apply_separable(f, mats)
    return ((f - f.mean()) / (f.std() + 1e-12)).astype(np.float32)


def _threshold_for_share(field: np.ndarray, inside: np.ndarray, share: float) -> float:
    return float(np.quantile(field[inside], 1.0 - share)) if inside.any() else np.inf


def _lobulated_distance(grid, centre, lobulation, elongation, rng) -> np.ndarray:
    """Normalised distance d(x) = r(x) / ρ(direction of x); the tumour is {d ≤ radius}.

    ρ is a random low-frequency Fourier series on the direction sphere (the lobes); it does not
    depend on the radius, so matching the volume only rescales the radius.
    """
    z, y, x = grid
    dz = (z - centre[0]) / elongation[0]
    dy = (y - centre[1]) / elongation[1]
    dx = (x - centre[2]) / elongation[2]
    r = np.sqrt(dz**2 + dy**2 + dx**2) + 1e-6
    n = np.stack(np.broadcast_arrays(dz / r, dy / r, dx / r))
    radial = np.ones_like(r)
    for _ in range(6):
        omega = rng.normal(0.0, 2.5, 3)
        radial += (
            lobulation
            * rng.uniform(0.3, 1.0)
            * np.cos(np.tensordot(omega, n, axes=1) + rng.uniform(0, 2 * np.pi))
        )
    return r / np.maximum(radial, 0.2)


def render_mri(
    latents: dict[str, float],
    volume_cc: float,
    site: SiteEffects,
    seed_sequence,
    *,
    sequences=SEQUENCES,
    rho_scale: float = 1.0,
) -> tuple[dict[str, SimpleITK.Image], SimpleITK.Image]:  # noqa: F821
    """Render the patient's MRI on the site's grid.

    Returns the images of ``sequences`` (int16, ``SimpleITK.Image``) and the tumour mask (uint8),
    all sharing one geometry. ``rho_scale``: see :func:`mri_visible_latents`.
    """
    import SimpleITK as sitk

    rng = np.random.default_rng(seed_sequence)
    visible = mri_visible_latents(latents, rng.standard_normal(3), rho_scale)
    a, b, h = visible["a"], visible["b"], visible["h"]
    target_mm3 = volume_cc * 1000.0
    radius = (3.0 * target_mm3 / (4.0 * np.pi)) ** (1.0 / 3.0)
    fov_xy = int(max(128, np.ceil(3.2 * radius)))
    fov_z = int(max(96, np.ceil(2.8 * radius)))
    shape = (fov_z, fov_xy, fov_xy)  # (z, y, x), 1 mm voxels
    grid = np.ogrid[0 : shape[0], 0 : shape[1], 0 : shape[2]]
    zc, yc, xc = (s / 2.0 for s in shape)

    # Body: elliptical cross-section with a fat rim and a bony column posteriorly; it does not
    # change along z, so it is drawn once as a 2-D tissue map.
    _, y, x = grid
    body_r = ((y[0] - yc) / (0.46 * fov_xy)) ** 2 + ((x[0] - xc) / (0.48 * fov_xy)) ** 2
    tissue2d = np.zeros((shape[1], shape[2]), np.uint8)  # 0 air, 1 fat, 2 muscle, 3 bone
    tissue2d[body_r <= 1.0] = 1
    tissue2d[body_r <= 0.80] = 2
    tissue2d[((y[0] - (yc + 0.22 * fov_xy)) ** 2 + (x[0] - xc) ** 2) <= (0.12 * fov_xy) ** 2] = 3

    # Tumour: lobulated, next to the bone, volume matched to volume_cc. Everything about the
    # tumour is computed inside its bounding box only (the grid is mostly outside it).
    centre = (zc + rng.normal(0, 2), yc + 0.05 * fov_xy + rng.normal(0, 2), xc + rng.normal(0, 2))
    half = int(np.ceil(1.9 * radius))
    box = tuple(
        slice(max(0, int(c) - half), min(n, int(c) + half + 1))
        for c, n in zip(centre, shape, strict=True)
    )
    box_grid = np.ogrid[tuple(slice(sl.start, sl.stop) for sl in box)]
    lobulation = 0.06 + 0.08 * _sigmoid(1.2 * h)
    elongation = np.exp(rng.normal(0.0, 0.12, 3))
    elongation /= np.prod(elongation) ** (1 / 3)
    distance = _lobulated_distance(box_grid, centre, lobulation, elongation, rng)
    # Radius whose voxel count matches the target volume (1 mm³ voxels): a quantile of d.
    n_voxels = int(round(target_mm3))
    flat = np.sort(distance, axis=None)
    radius = float(flat[min(n_voxels, flat.size) - 1])
    inside = distance <= radius
    mask = np.zeros(shape, bool)
    mask[box] = inside

    box_shape = inside.shape
    scale_mm = float(np.clip(5.0 * np.exp(-0.35 * h), 1.5, 10.0))
    septa_field = _smooth(box_shape, scale_mm, rng)
    septa = septa_field >= _threshold_for_share(
        septa_field, inside, float(0.05 + 0.35 * _sigmoid(1.2 * a - 0.5))
    )
    enhance_field = _smooth(box_shape, scale_mm * 1.5, rng)
    enhancing = _sigmoid(
        3.0
        * (
            enhance_field
            - _threshold_for_share(
                enhance_field, inside, float(0.05 + 0.4 * _sigmoid(1.2 * b - 0.3))
            )
        )
    )
    texture = _smooth(box_shape, max(1.0, scale_mm / 2.5), rng) * float(
        0.05 + 0.05 * np.exp(0.5 * h)
    )

    # Acquisition grid of this site: slice-profile blur (FWHM = voxel size), then resample.
    spacing = np.array(site.mri_spacing[::-1])  # (z, y, x) mm
    out_shape = tuple(int(np.floor(s / sp)) for s, sp in zip(shape, spacing, strict=True))
    sigma = np.maximum(spacing / 2.355, 0.4)
    matrices = [
        _resampling_matrix(n_in, (np.arange(n_out) + 0.5) * sp - 0.5, sg).astype(np.float32)
        for n_in, n_out, sp, sg in zip(shape, out_shape, spacing, sigma, strict=True)
    ]

    def acquire(volume: np.ndarray) -> np.ndarray:
        return _apply_separable(volume, matrices)

    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in out_shape], indexing="ij")
    poly = rng.normal(0, 1, 6)
    bias = (
        poly[0] * xx
        + poly[1] * yy
        + poly[2] * zz
        + poly[3] * xx * yy
        + poly[4] * xx**2
        + poly[5] * yy**2
    )
    bias = 1.0 + site.mri_bias_amplitude * bias / (np.abs(bias).max() + 1e-12)

    images = {}
    seq_index = {s: i for i, s in enumerate(SEQUENCES)}
    for seq in sequences:
        fat, musc, bone_i, myxoid, septum, boost = _INTENSITY[seq]
        slice2d = np.array([0.0, fat, musc, bone_i], np.float32)[tissue2d]
        vol = np.repeat(slice2d[None], shape[0], axis=0)
        tumour_i = myxoid * (1.0 + texture) + boost * enhancing
        tumour_i = np.where(septa, septum * (1.0 + 0.5 * texture), tumour_i)
        vol[box][inside] = tumour_i[inside]
        vol = acquire(vol) * bias
        k = seq_index[seq]
        vol = site.mri_scale[k] * vol + site.mri_offset[k] * (vol > 1.0)
        sd = site.mri_noise * 100.0 * site.mri_scale[k]
        vol = np.hypot(vol + rng.normal(0, sd, out_shape), rng.normal(0, sd, out_shape))
        images[seq] = np.clip(np.round(vol), 0, 32767).astype(np.int16)

    mask_acq = (acquire(mask.astype(np.float32)) >= 0.5).astype(np.uint8)
    origin = tuple(float(v) for v in rng.uniform(-100, 100, 3))

    def to_sitk(array):
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(tuple(float(s) for s in site.mri_spacing))
        img.SetOrigin(origin)
        return img

    return {seq: to_sitk(arr) for seq, arr in images.items()}, to_sitk(mask_acq)


def write_nifti(image, path: Path) -> None:
    """Write a SimpleITK image atomically (temporary name, then rename)."""
    import SimpleITK as sitk

    path = Path(path)
    tmp = path.with_name("partial-" + path.name)
    sitk.WriteImage(image, str(tmp), useCompression=True)
    tmp.replace(path)
