"""Whole-slide stage: read → tissue → tiles + QC → Macenko → frozen encoder → HDF5 per slide.

Modules: :mod:`.reader` (OpenSlide / tiffslide), :mod:`.tissue`, :mod:`.tiling` (grid, blocks,
QC), :mod:`.stain` (Macenko), :mod:`.encoders` (registry), :mod:`.transforms` (the tile
preprocessing every encoder shares), :mod:`.synthclip` (the small CLIP trained on synthetic
tiles), :mod:`.embed` (the overlapped, resumable pipeline), :mod:`.prompts` (prompt banks and
text embeddings), :mod:`.store` (the HDF5 feature store), :mod:`.export` (GeoJSON, QC
thumbnails). Nothing heavy is imported here; import the submodules you need.
"""
