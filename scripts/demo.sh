#!/usr/bin/env bash
# make demo: explain the default model's next-token prediction.
#   scripts/demo.sh RESID_BINARY MODEL PROMPT
set -euo pipefail
bin=$1 model=$2 prompt=$3
if [ ! -e "$model" ]; then
  dir=${RESID_MODELS:-../shared/models}/tinyllamas
  cat >&2 <<MSG
resid: the default model is not at $model.
Download stories260K (a 260K-parameter Llama trained on TinyStories, MIT) with:

  mkdir -p "$dir" && cd "$dir"
  curl -LO https://huggingface.co/karpathy/tinyllamas/resolve/main/stories260K/stories260K.bin
  curl -LO https://huggingface.co/karpathy/tinyllamas/resolve/main/stories260K/tok512.bin

or point RESID_MODELS at a folder holding tinyllamas/stories260K.bin, or run
  make demo DEMO_MODEL=/path/to/model
MSG
  exit 1
fi
if "$bin" explain --help >/dev/null 2>&1; then
  exec "$bin" explain "$model" -p "$prompt"
fi
"$bin" run "$model" -p "$prompt" --top 10
"$bin" generate "$model" -p "$prompt" -n 40
