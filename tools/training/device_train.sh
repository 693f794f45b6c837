#!/usr/bin/env bash
# One call on a lent GPU machine: train a default model there for at most MINUTES and bring back
# its EMA export and loss log. From this machine, with the `device` tool:
#
#   run(command="tools/training/device_train.sh dit11 8 --finetune-from FILE --steps 6000 ...",
#       carry=[".host/ComfyUI"], timeout_s=600)
#
# The machine's image has torch but neither PyAV nor torchsde; the trainer imports neither
# (tests/host/test_training_on_a_bare_torch_image.py), and ComfyUI's tree travels as the carried
# .host/ComfyUI (the pinned host, ~25 MB beside the repository's ~28 MB). The checkpoint (weights,
# optimizer, EMA: ~100 MB) stays there; the exported EMA (fp16, ~7 MB) comes back under $OUT,
# and the next call fine-tunes from it (--finetune-from, a fresh optimizer and schedule).
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 RUN_NAME MINUTES TRAIN_OPTIONS..." >&2
    exit 2
fi
run=$1 minutes=$2
shift 2
out=${OUT:-/tmp/guidance-lab-device-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 GUIDANCE_LAB_DEVICE=gpu GUIDANCE_LAB_CACHE=/tmp/guidance-lab-cache
nvidia-smi -L || true
python3 -m tools.training.train --run-name "$run" --device cuda --max-minutes "$minutes" \
    --loader-workers "$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))" --threads 2 "$@" 2>&1 | tr '\r' '\n' | grep -v '^$' \
    | awk 'NR % 50 == 1 || !/it\/s|s\/it/'
python3 -m tools.training.train --run-name "$run" --export "$out/$run.safetensors"
cp "$GUIDANCE_LAB_CACHE/training/$run/loss.jsonl" "$out/$run.loss.jsonl"
