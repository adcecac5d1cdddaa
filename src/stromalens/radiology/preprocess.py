"""Image preprocessing before feature extraction, and the perturbations of the stability filter.

Per sequence, in this order:

1. **N4 bias-field correction** (Tustison et al. 2010, IEEE TMI 29:1310) on a copy shrunk by
   integer factors to about ``fit_spacing_mm`` per axis, inside an Otsu body mask; the fitted log
   bias field ``log B(x)`` is evaluated on the full-resolution grid and divided out,
   ``I_c = I / exp(log B)``.
2. **z-normalisation** ``I_z = (I_c − μ) / σ`` with μ, σ over the tumour (``region: roi``) or
   the Otsu body mask (``region: body``).
3. **Crop** to the tumour's bounding box plus ``crop_margin_mm`` (context for LoG/wavelet).
4. **Resampling** to ``spacing_mm`` (1 mm isotropic) on a grid centred on the original one
   (:func:`target_grid`, IBSI's grid-centre alignment): B-spline (or linear) for the image.
   The mask rule (IBSI reference manual, "Interpolation"): the binary mask is interpolated
   *linearly* as a {0, 1} image and a voxel is kept where the interpolated fraction is ≥ 0.5
   (partial-volume threshold), so it stays a label map and keeps its volume; before that, a
   multi-label mask is reduced to the tumour label(s) the configuration names
   (:func:`select_labels`).

Interpolation comes last so that the perturbations of :func:`perturb` — a rigid rotation about
the slice axis and a sub-voxel translation applied *through* the interpolation (as Zwanenburg
et al. 2019 do), added Gaussian noise and contour randomisation — reuse one bias-field fit. N4
and the normalisation statistics are computed on the native grid (N4 shrinks it anyway;
interpolation is linear in the intensities, so normalising before or after it differs only in
which samples estimate μ and σ).

Example
-------
>>> prepared = prepare(image, mask, PreprocessSettings())                 # doctest: +SKIP
>>> image_1mm, mask_1mm = resample_pair(prepared, (1.0, 1.0, 1.0))        # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .settings import PreprocessSettings, StabilitySettings


@dataclass
class Prepared:
    """A sequence after N4, normalisation and cropping, on its native grid."""

    image: object  # SimpleITK.Image, float32
    mask: object  # SimpleITK.Image, uint8 {0, 1}
    stats: dict


def body_mask(image):
    """Otsu foreground (body) mask of an image, uint8."""
    import SimpleITK as sitk

    return sitk.OtsuThreshold(sitk.Cast(image, sitk.sitkFloat32), 0, 1, 200)


def n4_correct(image, *, fit_spacing_mm=4.0, iterations=(50, 50, 30), convergence=1e-3):
    """N4 bias-field correction fitted on a shrunk copy, applied at full resolution.

    The shrink factor along each axis is ``round(fit_spacing_mm / spacing)`` (at least 1), so
    thick slices are shrunk less than fine in-plane pixels. Returns a float32 image.
    """
    import SimpleITK as sitk

    image = sitk.Cast(image, sitk.sitkFloat32)
    spacing = np.array(image.GetSpacing())
    factors = [max(1, int(round(fit_spacing_mm / s))) for s in spacing]
    mask = body_mask(image)
    small = sitk.Shrink(image, factors)
    small_mask = sitk.Shrink(mask, factors)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(i) for i in iterations])
    n4.SetConvergenceThreshold(float(convergence))
    n4.Execute(small, small_mask)
    log_bias = n4.GetLogBiasFieldAsImage(image)
    corrected = image / sitk.Exp(log_bias)
    corrected.CopyInformation(image)
    return sitk.Cast(corrected, sitk.sitkFloat32)


def z_normalise(image, region_mask):
    """``(I − μ) / σ`` over the voxels of ``region_mask``; returns (image, {"mean", "sd"})."""
    import SimpleITK as sitk

    values = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(region_mask) > 0]
    mean, sd = float(values.mean()), float(values.std())
    if not sd > 0:
        raise ValueError(f"cannot z-normalise: the region's intensities are constant ({mean:g})")
    out = sitk.Cast((sitk.Cast(image, sitk.sitkFloat32) - mean) / sd, sitk.sitkFloat32)
    out.CopyInformation(image)
    return out, {"mean": mean, "sd": sd}


def crop_to_mask(image, mask, margin_mm: float):
    """Crop both images to the mask's bounding box plus ``margin_mm`` (clipped to the image)."""
    import SimpleITK as sitk

    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    x0, y0, z0, sx, sy, sz = stats.GetBoundingBox(1)
    spacing = np.array(image.GetSpacing())
    pad = np.ceil(margin_mm / spacing).astype(int)
    lo = np.maximum(np.array([x0, y0, z0]) - pad, 0)
    hi = np.minimum(np.array([x0 + sx, y0 + sy, z0 + sz]) + pad, np.array(image.GetSize()))
    size = [int(v) for v in hi - lo]
    index = [int(v) for v in lo]
    return (
        sitk.RegionOfInterest(image, size, index),
        sitk.RegionOfInterest(mask, size, index),
    )


def prepare(image, mask, settings: PreprocessSettings, *, n4: bool = True, normalise: bool = True):
    """N4 (if ``n4``), z-normalisation (if ``normalise``) and cropping of one sequence."""
    import SimpleITK as sitk

    stats: dict = {}
    if n4:
        image = n4_correct(
            image,
            fit_spacing_mm=settings.n4.fit_spacing_mm,
            iterations=settings.n4.iterations,
            convergence=settings.n4.convergence,
        )
    else:
        image = sitk.Cast(image, sitk.sitkFloat32)
    if normalise:
        region = mask if settings.normalise.region == "roi" else body_mask(image)
        image, stats = z_normalise(image, region)
    image, mask = crop_to_mask(image, mask, settings.crop_margin_mm)
    return Prepared(image=image, mask=mask, stats=stats)


def target_grid(image, spacing):
    """A grid of ``spacing`` centred on ``image``'s grid (IBSI's "align grid centres").

    Along each image axis, with ``n_a`` voxels of spacing ``s_a`` and first voxel centre
    ``x_a,0`` (IBSI reference manual, Zwanenburg et al. 2020, Radiology 295:328, section
    "Interpolation", grid alignment):

        n_b = ⌈n_a s_a / s_b⌉,     x_b,0 = x_a,0 + (s_a (n_a − 1) − s_b (n_b − 1)) / 2,

    so the new grid's centre coincides with the original grid's centre; the offset is taken
    along the image's direction cosines (the grid keeps the image's orientation).
    """
    import SimpleITK as sitk

    old_spacing = np.array(image.GetSpacing())
    old_size = np.array(image.GetSize())
    new_spacing = np.array(spacing, dtype=float)
    # the small tolerance keeps an exact multiple (e.g. 3 × 1 mm from 1 × 3 mm) from rounding up
    size = np.maximum(1, np.ceil(old_size * old_spacing / new_spacing - 1e-9)).astype(int)
    offset = (old_spacing * (old_size - 1) - new_spacing * (size - 1)) / 2.0  # (3,) index frame
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin()) + direction @ offset
    grid = sitk.Image([int(v) for v in size], sitk.sitkUInt8)
    grid.SetSpacing([float(v) for v in new_spacing])
    grid.SetOrigin([float(v) for v in origin])
    grid.SetDirection(image.GetDirection())
    return grid


def grid_centre(image) -> np.ndarray:
    """Physical centre of an image's grid (the midpoint of its first and last voxel centres)."""
    last = [int(n) - 1 for n in image.GetSize()]
    a = np.array(image.TransformIndexToPhysicalPoint([0, 0, 0]))
    b = np.array(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in last]))
    return (a + b) / 2.0


def slice_normal(image) -> np.ndarray:
    """Unit vector of the image's third axis (the direction across its slices)."""
    normal = np.array(image.GetDirection()).reshape(3, 3)[:, 2]
    return normal / np.linalg.norm(normal)


def select_labels(mask, labels=None, *, where: str = ""):
    """A uint8 {0, 1} mask of the tumour label(s) of a label map.

    ``labels`` (a tuple) are those the configuration names; their union is kept, and each must
    occur. ``None`` keeps the mask's only non-zero label; a mask with several labels and no
    ``labels`` raises ``ValueError`` listing the labels found (keeping one silently would be
    a guess).
    """
    import SimpleITK as sitk

    values = sitk.GetArrayViewFromImage(mask)
    found = sorted(int(v) for v in np.unique(values) if v != 0)
    prefix = f"{where}: " if where else ""
    if not found:
        raise ValueError(f"{prefix}the mask is empty (no non-zero voxel)")
    if labels is None:
        if len(found) > 1:
            raise ValueError(
                f"{prefix}the mask holds several labels {found[:20]}; name the tumour's in "
                "preprocess.label (or the sequence's label), e.g. label: [1]"
            )
        labels = tuple(found)
    absent = [v for v in labels if v not in found]
    if absent:
        raise ValueError(f"{prefix}the mask has no voxel of label(s) {absent} (labels: {found})")
    keep = np.isin(values, list(labels)).astype(np.uint8)
    binary = sitk.GetImageFromArray(keep)
    binary.CopyInformation(mask)
    return binary


def resample_pair(prepared: Prepared, spacing, interpolator="bspline", transform=None):
    """Resample image and mask onto a ``spacing`` grid, optionally through a rigid ``transform``
    (which maps output points to input points, as in ``SimpleITK.Resample``).

    ``spacing=None`` keeps the native grid (only the transform, if any, is applied).
    """
    import SimpleITK as sitk

    grid = target_grid(prepared.image, spacing) if spacing is not None else prepared.image
    if spacing is None and transform is None:
        return prepared.image, prepared.mask
    transform = transform or sitk.Transform()
    method = sitk.sitkBSpline if interpolator == "bspline" else sitk.sitkLinear
    image = sitk.Resample(prepared.image, grid, transform, method, 0.0, sitk.sitkFloat32)
    fraction = sitk.Resample(
        sitk.Cast(prepared.mask, sitk.sitkFloat32), grid, transform, sitk.sitkLinear, 0.0
    )
    mask = sitk.Cast(fraction >= 0.5, sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(mask).any():
        raise ValueError("the mask vanished when resampled (is the tumour smaller than a voxel?)")
    return image, mask


def perturb(prepared: Prepared, pre: PreprocessSettings, stab: StabilitySettings, rng):
    """One perturbed (image, mask) pair on the target grid.

    Rotation θ ~ U(−r, r) about the slice normal (the image's third axis,
    :func:`slice_normal`) through the tumour's centroid and translation
    t ~ U(−d, d)³ (mm) act through the interpolation; then noise ε ~ N(0, s²) is added and the
    contour is randomised: ``mask' = {x : D(x) + f(x) < 0}`` with ``D`` the signed distance to
    the contour (mm, negative inside) and ``f`` a smooth Gaussian field (correlation 3 mm, sd
    ``contour_mm``), or eroded/dilated by one voxel (``erode_dilate``).
    """
    import SimpleITK as sitk

    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(prepared.mask)
    centre = stats.GetCentroid(1)
    # about the slice normal, not physical z: on a sagittal or coronal series a rotation
    # about z would interpolate across the thick slices
    transform = sitk.VersorRigid3DTransform()
    transform.SetCenter(centre)
    angle = np.deg2rad(rng.uniform(-stab.rotation_deg, stab.rotation_deg))
    transform.SetRotation([float(v) for v in slice_normal(prepared.image)], float(angle))
    transform.SetTranslation([float(v) for v in rng.uniform(-1, 1, 3) * stab.translation_mm])
    image, mask = resample_pair(prepared, pre.spacing_mm, pre.interpolator, transform)
    if stab.noise_sd > 0:
        noise = rng.normal(0.0, stab.noise_sd, sitk.GetArrayViewFromImage(image).shape)
        noisy = sitk.GetImageFromArray((sitk.GetArrayFromImage(image) + noise).astype(np.float32))
        noisy.CopyInformation(image)
        image = noisy
    mask = _perturb_mask(mask, stab, rng)
    return image, mask


def _perturb_mask(mask, stab: StabilitySettings, rng):
    import SimpleITK as sitk
    from scipy import ndimage

    if stab.mask == "none":
        return mask
    if stab.mask == "erode_dilate":
        choice = rng.integers(3)
        if choice == 0:
            new = sitk.BinaryErode(mask, [1, 1, 1])
        elif choice == 1:
            new = sitk.BinaryDilate(mask, [1, 1, 1])
        else:
            new = mask
    else:
        distance = sitk.GetArrayFromImage(
            sitk.SignedMaurerDistanceMap(mask, insideIsPositive=False, useImageSpacing=True)
        )
        spacing = np.array(mask.GetSpacing())[::-1]
        field = ndimage.gaussian_filter(rng.standard_normal(distance.shape), 3.0 / spacing)
        field *= stab.contour_mm / (field.std() + 1e-12)
        new = sitk.GetImageFromArray((distance + field < 0).astype(np.uint8))
        new.CopyInformation(mask)
    new = sitk.Cast(new, sitk.sitkUInt8)
    return new if sitk.GetArrayViewFromImage(new).any() else mask
