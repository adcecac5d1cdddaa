#!/usr/bin/env bash
# The whole-slide throughput benchmark on one GPU, in one call of at most 5 minutes.
#
# Prepare here: `bash benchmarks/wsi_gpu_wheels.sh` (fetches .whl/). Then on the device machine,
# from the repository root, with .whl carried:
#     bash benchmarks/wsi_gpu.sh            # writes $OUT/wsi_gpu.json (or ./wsi_gpu.json)
# Measures, side by side in one process per encoder: end-to-end tiles/s (slide → tiles → QC →
# Macenko → transforms → encoder in bf16 → HDF5, 8 decode workers, pinned memory) against the
# encoder alone on device-resident tensors, for open_clip ViT-B/16 and the UNI-size ViT-L/16;
# and peak host memory on an 8k and a 16k slide. Goals (issue 14): ViT-L/16 bf16 ≥ 2,000 tiles/s
# end to end and ≥ 0.85 of the encoder alone; ViT-B/16 ≥ 4,000 tiles/s; memory flat in size.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-bf16}
OUT_DIR=${OUT:-.}
if [ -d .whl ] && ! python3 -c "import pydantic, open_clip, openslide" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
timeout "${LIMIT_S:-270}" python3 benchmarks/wsi_throughput.py \
  --device "$DEVICE" --precision "$PRECISION" --workers "${WORKERS:-8}" --batch "${BATCH:-256}" \
  --size "${SIZE:-8192}" --repeats 2 --encoders openclip-vit-b-16 uni \
  --memory-sizes "${MEM_SMALL:-8192}" "${MEM_LARGE:-16384}" --memory-encoder uni \
  --out "$OUT_DIR/wsi_gpu.json"
