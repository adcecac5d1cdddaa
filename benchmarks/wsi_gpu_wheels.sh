#!/usr/bin/env bash
# Fetch, on this machine, the wheels the GPU benchmark (benchmarks/wsi_gpu.sh) needs on a device
# machine whose Python 3.12 has torch, timm, h5py, tifffile, numpy, scipy, pandas, opencv and
# pyyaml but not openslide, imagecodecs, open_clip or pydantic. Versions are those of this
# project's environment, so both machines run the same libraries. The wheels go to .whl/
# (ignored by git: `echo /.whl/ >> .git/info/exclude`), about 40 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_PIP=${VENV_PIP:-.venv/bin/pip}
mkdir -p .whl
EXCLUDE="$(git rev-parse --git-common-dir)/info/exclude"
grep -qx "/.whl/" "$EXCLUDE" 2>/dev/null || echo /.whl/ >> "$EXCLUDE"
pinned() { "$VENV_PIP" freeze 2>/dev/null | grep -i -E "^$1==" | head -1; }
for name in pydantic pydantic_core annotated-types typing-inspection typing_extensions \
            openslide-python openslide-bin imagecodecs open_clip_torch ftfy wcwidth regex timm; do
  spec=$(pinned "$name"); spec=${spec:-$name}
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "$spec"
done
du -sh .whl
