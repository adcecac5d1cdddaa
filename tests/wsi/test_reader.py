import numpy as np
import pytest

from stromalens.wsi.reader import SlideError, open_slide

from .conftest import REAL_SLIDE, needs_real_data


def test_synthetic_slide_reports_its_mpp_and_pyramid(synthetic_slides):
    with open_slide(synthetic_slides[0]) as slide:
        assert slide.mpp == pytest.approx(0.5)
        assert slide.mpp_source == "metadata"
        assert slide.level_downsamples == [1.0, 4.0, 16.0]
        block = slide.read_region((100, 50), 0, (300, 200))
        assert block.shape == (200, 300, 3) and block.dtype == np.uint8


def test_backends_agree(synthetic_slides):
    with open_slide(synthetic_slides[0], backend="openslide") as a:
        with open_slide(synthetic_slides[0], backend="tiffslide") as b:
            ra = a.read_region((256, 256), 1, (64, 64)).astype(int)
            rb = b.read_region((256, 256), 1, (64, 64)).astype(int)
            assert a.mpp == b.mpp
            assert np.abs(ra - rb).mean() < 2.0


def test_slide_without_mpp_is_an_error_unless_overridden(broken_slides):
    with pytest.raises(SlideError, match="no µm/px"):
        open_slide(broken_slides["no_mpp"])
    with open_slide(broken_slides["no_mpp"], mpp=0.5) as slide:
        assert slide.mpp == 0.5 and slide.mpp_source == "override"


def test_bad_override_and_backend_name_the_value(broken_slides):
    with pytest.raises(ValueError, match="-1"):
        open_slide(broken_slides["good"], mpp=-1)
    with pytest.raises(ValueError, match="bioformats"):
        open_slide(broken_slides["good"], backend="bioformats")


def test_truncated_and_missing_files_raise(broken_slides, tmp_path):
    with pytest.raises(SlideError):
        with open_slide(broken_slides["truncated"]) as slide:
            slide.read_region((0, 0), 0, tuple(slide.dimensions))
    with pytest.raises(SlideError, match="not found"):
        open_slide(tmp_path / "nothing.svs")


@needs_real_data
def test_real_aperio_slide():
    with open_slide(REAL_SLIDE) as slide:
        assert slide.mpp == pytest.approx(0.499)
        assert slide.dimensions == (2220, 2967)
