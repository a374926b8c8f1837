#!/usr/bin/env bash
# The IsoFLOP experiment of docs/scaling.md on the GPUs of one machine: encode Gutenberg, sweep 4 budgets x
# 5-8 sizes, fit, then train at 10x the largest budget the shape approach 3 calls optimal (and its
# neighbours) and compare predicted with measured validation loss.
#
#   bash benchmarks/scaling_sweep.sh OUT_DIR     # DATA: folder with gutenberg-*.txt.xz and tok10k/
set -euo pipefail
OUT=${1:?usage: benchmarks/scaling_sweep.sh OUT_DIR}
DATA=${DATA:-local_data/gpu}
WORK=${WORK:-runs/scaling-data}
NGPU=${NGPU:-$(python -c 'import torch; print(torch.cuda.device_count())')}
SCRATCHLM=${SCRATCHLM:-scratchlm}
DEVICES=${DEVICES:-$(for i in $(seq 0 $((NGPU - 1))); do printf "cuda:%d " "$i"; done)}
mkdir -p "$WORK" "$OUT"

[ -f "$WORK/train.bin.json" ] || $SCRATCHLM tokenizer encode --tokenizer "$DATA/tok10k" --no-progress \
    --input "$DATA"/gutenberg-0*.txt.xz --out "$WORK/train.bin"
[ -f "$WORK/val.bin.json" ] || $SCRATCHLM tokenizer encode --tokenizer "$DATA/tok10k" --no-progress \
    --input "$DATA/gutenberg-valid.txt.xz" --out "$WORK/val.bin"

# Dial: d_model = 32 x depth in 32-wide heads; lr = 3e-3 x (512 / d_model)^0.5.
COMMON=(--base train/isoflop-base --data.train "$WORK/train.bin" --data.val "$WORK/val.bin"
        --width-per-layer 32 --head-dim 32 --lr-width-exponent 0.5 --devices $DEVICES)
time $SCRATCHLM scaling sweep "${COMMON[@]}" --budgets 5e13 1e14 2e14 5e14 --depths 1 2 3 4 5 6 7 8 \
    --min-steps 60 --out "$OUT/sweep"
$SCRATCHLM scaling fit "$OUT/sweep/results.jsonl" --budgets 5e15 --n-boot 50 --out "$OUT/fit"

# 10x check: approach 3's optimal size at 5e15 and sizes around it (0.5x, 1.3x, 2.5x; nearest dial depths).
N_OPT=$(python -c "import json; f = json.load(open('$OUT/fit/fit.json'))
print(f['approaches']['parametric']['predictions'][0]['params']['value'])")
SIZES=$(python -c "print(' '.join(f'{$N_OPT * k:.4g}' for k in (0.5, 1, 1.3, 2.5)))")
time $SCRATCHLM scaling sweep "${COMMON[@]}" --budgets 5e15 --params $SIZES --min-steps 60 --out "$OUT/validate"
$SCRATCHLM scaling check "$OUT/sweep/results.jsonl" "$OUT/validate/results.jsonl" --n-boot 50
