#!/usr/bin/env bash
# Build .gpu-carry/ here (CPU), everything bench/gpu/run.sh needs on a GPU machine whose image lacks it:
#   wheels/  cp312 wheels of what the image lacks: MLflow (skinny) and what it imports, pydantic, IREE's runtime,
#            peft at our pin (tasks/train/lora.py uses some of its internals; the image's version may differ), and
#            uvicorn (bench/gpu/serve.py serves through our server)
#   gl/      the Vulkan loader (libvulkan1), unpacked there if the image has none
#   seed/    the seed's project: params.yaml, the BPE-4096 tokenizer and the token shards of the built-in corpus
#   vulkan/  the training step compiled by IREE for vulkan-spirv, with its reference (bench/gpu/vulkan.py)
# It stays out of git (.gitignore) and travels with the device tool's `carry: [".gpu-carry"]` (64 MiB in all).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
CARRY=${CARRY:-.gpu-carry}
mkdir -p "$CARRY"/wheels "$CARRY"/gl

lock() { grep -i -E "^${1//-/[-_]}==" requirements.lock | head -1; }
# What the GPU image (KINDS.md's package list) lacks among MLflow's imports on the sqlite tracking path,
# each checked by importing mlflow and logging a run under Python 3.12 (cffi: cryptography's backend, which
# the image turned out to lack on 2026-11-26). bench/gpu/vulkan.py prepare slims IREE's runtime wheel.
WHEELS=(alembic annotated-types cachetools databricks-sdk fastapi gitdb gitpython importlib-metadata mako
        mlflow-skinny opentelemetry-api opentelemetry-proto opentelemetry-sdk opentelemetry-semantic-conventions
        pydantic pydantic-core python-dotenv smmap sqlalchemy sqlparse starlette typing-inspection cryptography
        cffi pycparser iree-base-runtime peft uvicorn)
specs=()
for name in "${WHEELS[@]}"; do spec=$(lock "$name" || true); specs+=("${spec:-$name}"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d "$CARRY"/wheels "${specs[@]}"

if ! ls "$CARRY"/gl/libglvnd0_*.deb >/dev/null 2>&1; then  # the loader, and the GL dispatch NVIDIA's ICD needs
  mkdir -p /tmp/amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  apt-get $o update -qq && (cd "$CARRY"/gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi

if [ ! -f "$CARRY"/seed/data/shards/manifest.json ]; then
  mkdir -p "$CARRY"/seed/data
  cp params.yaml "$CARRY"/seed/ && cp data/chat_combined.txt "$CARRY"/seed/data/
  for stage in ingest tokenizer shard; do "$PY" -m chatpipe.cli "$stage" -C "$CARRY"/seed; done
  rm -rf "$CARRY"/seed/data/documents "$CARRY"/seed/mlflow.db "$CARRY"/seed/mlruns "$CARRY"/seed/metrics
fi

"$PY" bench/gpu/vulkan.py prepare --carry "$CARRY"
du -sh "$CARRY"/*
