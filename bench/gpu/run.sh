#!/usr/bin/env bash
# The GPU run: two prepared commands that prove the CUDA and Vulkan paths on a real GPU and train the seed's
# chat config, within a lease of minutes (bench/gpu/README.md): `--call seed` first, then `--call rest`. It runs under the GPU machine's own Python and
# torch: what that image lacks travels in .gpu-carry/ (bench/gpu/prepare.sh builds it here) — wheels
# (MLflow, pydantic, IREE's runtime), the Vulkan loader, the seed's tokenizer and shards, the compiled
# Vulkan step. Results go to $OUT (the device tool's folder), else bench/results/<date>-gpu/<call>/; a smoke's
# CPU numbers never go there: without $OUT it writes to a fresh temporary directory. Exit status: 0 when
# every part is ok, 1 when any part failed, timed out or was skipped unrun (suite.py; results written either way).
#
#   bash bench/gpu/run.sh --call seed     # on the GPU machine, first: the seed's pilot, gate, full run, bundle
#   bash bench/gpu/run.sh --call rest     # then: tests, serving, Vulkan, the benches
#   bash bench/gpu/run.sh --cpu-smoke     # every part for a few steps on CPU (make test runs this)
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
CARRY=${CARRY:-.gpu-carry}
smoke=0 call=all prev=
for arg in "$@"; do
  [ "$arg" = --cpu-smoke ] && smoke=1
  [ "$prev" = --call ] && call=$arg
  prev=$arg
done
if [ -z "${OUT:-}" ]; then
  if [ "$smoke" = 1 ]; then OUT=$(mktemp -d "${TMPDIR:-/tmp}/chatpipe-gpu-smoke-XXXXXX") || exit 1
  else OUT=bench/results/$(date +%F)-gpu/$call; fi
fi

if ls "$CARRY"/wheels/*.whl >/dev/null 2>&1 && ! "$PY" -c "import mlflow, pydantic, iree.runtime, uvicorn" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/chatpipe-site "$CARRY"/wheels/*.whl || { echo "run.sh: installing $CARRY/wheels failed"; exit 1; }
  export PYTHONPATH=/tmp/chatpipe-site
fi
# the Vulkan loader and the GL dispatch libraries that NVIDIA's ICD (libGLX_nvidia.so.0) links against
if [ "$(id -u)" = 0 ] && ls "$CARRY"/gl/*.deb >/dev/null 2>&1; then
  for f in "$CARRY"/gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$icd" ]; then export VK_DRIVER_FILES=$icd; fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} MLFLOW_LOGGING_LEVEL=WARNING HF_HUB_OFFLINE=1
exec "$PY" bench/gpu/suite.py --out "$OUT" --carry "$CARRY" "$@"
