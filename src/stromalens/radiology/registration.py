"""Move a tumour mask onto a sequence that has none of its own, by registering the images.

The sequence without a mask (*moving*) is registered onto the sequence that carries the mask
(*fixed*): the transform ``T`` maps fixed points to moving points and maximises the Mattes
mutual information (Mattes et al. 2003, IEEE TMI 22:120)

    T* = argmax_T  MI(F(x), M(T(x))),   MI = Σ p(f, m) log[p(f, m) / (p(f) p(m))],

estimated from Parzen-windowed joint histograms of ``bins`` bins on a random ``sampling``
fraction of the fixed voxels. ``T`` is rigid (``Euler3DTransform``, 6 parameters) or affine
(12), initialised by centring the two images' geometric centres, and optimised by regular-step
gradient descent over a multi-resolution pyramid (``shrink`` factors, Gaussian smoothing of
``smooth_mm``), coarse to fine (SimpleITK's ``ImageRegistrationMethod``; Lowekamp et al. 2013,
Front. Neuroinform. 7:45). ``method: none`` is for images that already share a frame of
reference: ``T`` is the identity (the mask is only resampled).

The mask then moves with ``T⁻¹`` onto the moving image's grid, nearest neighbour (labels stay
labels): ``mask_moving(y) = mask_fixed(T⁻¹(y))``. The quality record holds the metric before
(identity, i.e. the scanners' frames) and after registration (SimpleITK reports −MI: lower is
better) and the fraction of the mask's physical volume that lands inside the moving image.

Example
-------
>>> result = register(mr_t1, ct, RegistrationSettings())              # doctest: +SKIP
>>> ct_mask, inside = move_mask(mr_mask, ct, result.transform)         # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .settings import RegistrationSettings


class RegistrationError(ValueError):
    """A registration that cannot work or did not work (constant image, no overlap, a mask
    moved off the image); the sequence fails, the patient goes on."""


@dataclass
class Registration:
    """A fitted transform (fixed → moving points) and its quality record."""

    transform: object  # SimpleITK.Transform
    start: object  # the initial (centred) transform the optimiser began from
    metric_before: float
    metric_after: float
    iterations: int
    stop: str

    def qc(self) -> dict:
        return {
            "metric_before": round(self.metric_before, 5),
            "metric_after": round(self.metric_after, 5),
            "iterations": self.iterations,
        }


def _float(image):
    import SimpleITK as sitk

    return sitk.Cast(image, sitk.sitkFloat32)


def _check_not_constant(image, which: str) -> None:
    values = np.asarray(__import__("SimpleITK").GetArrayViewFromImage(image))
    if values.size == 0 or not np.ptp(values) > 0:
        raise RegistrationError(
            f"cannot register: the {which} image is constant (nothing to align on)"
        )


def _method(settings: RegistrationSettings, *, sampled: bool):
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.bins)
    if sampled:
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(settings.sampling, settings.seed)
    reg.SetInterpolator(sitk.sitkLinear)
    return reg


def metric(fixed, moving, transform, settings: RegistrationSettings) -> float:
    """Mattes −MI of ``moving`` seen through ``transform`` on every fixed voxel."""
    reg = _method(settings, sampled=False)
    reg.SetInitialTransform(transform)
    try:
        return float(reg.MetricEvaluate(_float(fixed), _float(moving)))
    except RuntimeError as exc:  # e.g. "All samples map outside moving image buffer"
        raise RegistrationError(
            f"cannot evaluate the registration metric: {str(exc).splitlines()[-1].strip()} "
            "(do the images overlap?)"
        ) from None


def register(fixed, moving, settings: RegistrationSettings, fixed_mask=None) -> Registration:
    """Register ``moving`` onto ``fixed``; see the module notes for the model.

    With ``fixed_mask`` (the tumour), the metric is computed on the fixed image cropped to the
    mask's bounding box plus ``margin_mm``: the alignment that matters is the tumour's, and it
    is several times faster. The optimiser starts from a centred transform
    (:func:`_centred_start`), and the result is the better of that start and the optimum (a
    registration never makes the metric worse than it started; ``stop`` says which was kept).

    Raises
    ------
    RegistrationError
        if an image is constant, the images do not overlap, or the optimiser fails.
    """
    import SimpleITK as sitk

    fixed, moving = _float(fixed), _float(moving)
    if fixed_mask is not None:
        fixed = _crop_around(fixed, fixed_mask, settings.margin_mm)
    _check_not_constant(fixed, "fixed (mask-carrying)")
    _check_not_constant(moving, "moving")
    identity = sitk.Euler3DTransform()
    if settings.method == "none":
        value = metric(fixed, moving, identity, settings)
        return Registration(identity, identity, value, value, 0, "none: shared frame of reference")
    start = _centred_start(fixed, moving, settings)
    before = metric(fixed, moving, start, settings)
    fitted, iterations, stop = _optimise(fixed, moving, start, settings)
    try:
        after = metric(fixed, moving, fitted, settings)
    except RegistrationError:  # the optimiser moved the image away
        after = float("inf")
    if not after <= before:
        fitted, after, stop = start, before, f"start kept (the optimum is worse): {stop}"
    if not after < 0:
        raise RegistrationError(
            f"registration found no shared information (mutual information {-after:g})"
        )
    return Registration(fitted, start, before, after, iterations, stop)


def _centred_start(fixed, moving, settings: RegistrationSettings):
    """The initial transform, centred: rotations about the fixed image's centre. Its
    translation is zero (the scanners' frames of reference are trusted) where the images
    overlap, else the shift that superimposes the two images' geometric centres."""
    import SimpleITK as sitk

    kind = sitk.Euler3DTransform() if settings.method == "rigid" else sitk.AffineTransform(3)
    centred = sitk.CenteredTransformInitializer(
        fixed, moving, kind, sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    shift = centred.GetTranslation()
    centred.SetTranslation((0.0, 0.0, 0.0))
    try:
        metric(fixed, moving, centred, settings)
    except RegistrationError:  # no overlap in the scanners' frames: superimpose the centres
        centred.SetTranslation(shift)
        metric(fixed, moving, centred, settings)  # raises if even that does not overlap
    return centred


def _optimise(fixed, moving, start, settings: RegistrationSettings):
    """Multi-resolution regular-step gradient descent from ``start``; (transform, its, stop)."""

    reg = _method(settings, sampled=True)
    # Steps in mm at the image's extent (scales from physical shift): 2 mm down to 1e-4 mm; a
    # slow relaxation (0.8) so the finest level is not stopped after a few direction changes
    # (with 0.5, a known 7 mm / 6° transform was recovered only to ~1 mm).
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0,
        minStep=1e-4,
        numberOfIterations=settings.iterations,
        relaxationFactor=0.8,
        gradientMagnitudeTolerance=1e-8,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(settings.shrink))
    reg.SetSmoothingSigmasPerLevel(list(settings.smooth_mm))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(start, inPlace=False)
    try:
        fitted = reg.Execute(fixed, moving)
    except RuntimeError as exc:
        raise RegistrationError(
            f"registration failed: {str(exc).splitlines()[-1].strip()}"
        ) from None
    return fitted, reg.GetOptimizerIteration(), reg.GetOptimizerStopConditionDescription()


def _crop_around(image, mask, margin_mm: float):
    """``image`` cropped to ``mask``'s bounding box plus ``margin_mm`` (mask on its grid)."""
    import SimpleITK as sitk

    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(mask > 0, sitk.sitkUInt8))
    if not stats.HasLabel(1):
        raise RegistrationError("cannot register: the mask-carrying sequence's mask is empty")
    box = np.array(stats.GetBoundingBox(1))
    pad = np.ceil(margin_mm / np.array(image.GetSpacing())).astype(int)
    lo = np.maximum(box[:3] - pad, 0)
    hi = np.minimum(box[:3] + box[3:] + pad, np.array(image.GetSize()))
    return sitk.RegionOfInterest(image, [int(v) for v in hi - lo], [int(v) for v in lo])


def move_mask(mask, moving, transform):
    """The fixed-grid ``mask`` on ``moving``'s grid through ``transform`` (fixed → moving);
    returns (uint8 mask, fraction of the mask's physical volume inside the moving image).

    Nearest neighbour, so a label map stays one. The fraction is counted on the fixed grid
    (independent of the moving grid's voxel size): the mask's voxels ``x`` whose ``T(x)`` falls
    inside the moving image, over all of the mask's voxels.
    """
    import SimpleITK as sitk

    binary = sitk.Cast(mask > 0, sitk.sitkUInt8)
    inverse = transform.GetInverse()  # rigid and affine transforms are invertible
    moved = sitk.Resample(binary, moving, inverse, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    extent = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    extent.CopyInformation(moving)
    covered = sitk.Resample(extent, binary, transform, sitk.sitkNearestNeighbor, 0)
    voxels = sitk.GetArrayViewFromImage(binary) > 0
    n = int(voxels.sum())
    inside = float((sitk.GetArrayViewFromImage(covered)[voxels] > 0).sum() / n) if n else 0.0
    return moved, inside


def centroid_shift(mask, transform, start=None) -> float:
    """How far (mm) ``transform`` moves the mask's centroid ``c`` from where ``start`` (default:
    the identity) puts it: ``‖T(c) − T₀(c)‖``. A QC figure: the scanners' frames of reference
    are usually right within millimetres, so a large shift by the optimiser flags a
    registration that slid along the anatomy (seen on the IBSI sarcoma PET, see
    ``benchmarks/radiomics_ibsi_sts.py``)."""
    import SimpleITK as sitk

    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(mask > 0, sitk.sitkUInt8))
    centre = stats.GetCentroid(1)
    origin = np.array(start.TransformPoint(centre) if start is not None else centre)
    return float(np.linalg.norm(np.array(transform.TransformPoint(centre)) - origin))


def dice(a, b) -> float:
    """Dice coefficient ``2|A ∩ B| / (|A| + |B|)`` of two masks on one grid (NaN if both empty)."""
    import SimpleITK as sitk

    x = sitk.GetArrayViewFromImage(a) > 0
    y = sitk.GetArrayViewFromImage(b) > 0
    if x.shape != y.shape:
        raise ValueError(f"masks on different grids: {x.shape[::-1]} vs {y.shape[::-1]}")
    total = int(x.sum()) + int(y.sum())
    return float("nan") if total == 0 else 2.0 * int((x & y).sum()) / total
