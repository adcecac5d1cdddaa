import subprocess
import sys
from pathlib import Path

from stromalens.wsi.store import read_slide

SCRIPT = Path(sys.executable).parent / "stromalens"


def test_wsi_tile_on_a_single_slide(tmp_path, synthetic_slides):
    slide = synthetic_slides[0]
    out = subprocess.run(
        [str(SCRIPT), "wsi", "tile", str(slide), "--out", str(tmp_path)],
        capture_output=True,
        encoding="utf-8",
    )
    assert out.returncode == 0, out.stderr
    leaf = tmp_path / "tiles" / "0.5mpp_224px_0px_overlap"
    assert "stores in" in out.stdout  # the folder --features takes is printed
    data = read_slide(leaf / f"{slide.stem}.h5")
    assert len(data.coords) > 0 and data.features is None
    assert (leaf / f"{slide.stem}.geojson").is_file()


def test_wsi_embed_reports_a_slide_without_mpp(tmp_path, broken_slides):
    out = subprocess.run(
        [
            str(SCRIPT),
            "wsi",
            "embed",
            str(broken_slides["no_mpp"]),
            "--out",
            str(tmp_path),
            "--weights",
            "random",
        ],
        capture_output=True,
        encoding="utf-8",
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "failed" in out.stdout


def test_wsi_tile_sizes_its_tiles_for_the_encoder_named(tmp_path, synthetic_slides):
    """As ``wsi embed``: tiles at the encoder's input size (CONCH 448 px), no weights needed."""
    slide = synthetic_slides[0]
    out = subprocess.run(
        [str(SCRIPT), "wsi", "tile", str(slide), "--out", str(tmp_path), "--encoder", "conch"],
        capture_output=True,
        encoding="utf-8",
    )
    assert out.returncode == 0, out.stderr
    data = read_slide(tmp_path / "tiles" / "0.5mpp_448px_0px_overlap" / f"{slide.stem}.h5")
    assert data.attrs["tile_px"] == 448 and data.features is None
    unknown = subprocess.run(
        [str(SCRIPT), "wsi", "tile", str(slide), "--out", str(tmp_path), "--encoder", "nope"],
        capture_output=True,
        encoding="utf-8",
    )
    assert unknown.returncode != 0 and "nope" in unknown.stdout + unknown.stderr
    assert len((unknown.stdout + unknown.stderr).strip().splitlines()) <= 3
