#!/usr/bin/env bash
# The GPU demonstration of docs/alignment.md in one command: encode Gutenberg with the 10k tokenizer, pretrain a
# GPT-2-small-shaped base model (12 x 768, context 512, ~3 min on an H100), then benchmarks/alignment.py on it:
# SFT (GSM8K train + arithmetic), GRPO (arithmetic), DPO (HH harmless-base), report cards (~6.5 min; 9.5 min in all).
#
#   bash benchmarks/alignment_gpu.sh OUT_DIR           # results: benchmarks/results/alignment_gpu.{json,md},
#                                                      #          docs/img/alignment_gpu_{sft,grpo,dpo}.png
#   QUICK=1 bash benchmarks/alignment_gpu.sh OUT_DIR   # the same end to end on CPU, tiny model (~2 min):
#                                                      # alignment_gpu_quick.{json,md}, plots in OUT_DIR/img
#
# OUT_DIR gets the runs (base, sft, grpo, dpo with report cards in <run>/eval/; checkpoints: GBs in real mode).
# DATA: folder with gutenberg-*.txt.xz, gutenberg-valid.txt.xz and tok10k/. SCRATCHLM_DATA: the data folder with
# eval/gsm8k/{train.jsonl.gz,test.jsonl}, alignment/hh_rlhf_harmless_base_test.jsonl.gz and
# alignment/simple_safety_tests.csv (nothing else is read). BASE_STEPS: pretraining steps.
set -euo pipefail
trap 'echo "alignment_gpu.sh: line $LINENO failed (exit $?)" >&2' ERR  # set -e alone exits silently
OUT=${1:?usage: benchmarks/alignment_gpu.sh OUT_DIR}
DATA=${DATA:-local_data/gpu}
SUFFIX=""
if [ "${QUICK:-0}" = 1 ]; then SUFFIX=-quick; fi  # not `$([ ... ] && echo)` in the assignment: its status 1 trips set -e
WORK=${WORK:-runs/alignment-gpu-data$SUFFIX}
PYTHON=${PYTHON:-python}
mkdir -p "$WORK" "$OUT"

if [ "${QUICK:-0}" = 1 ]; then
    TEXTS=("$DATA/gutenberg-000.txt.xz")
    BASE_STEPS=${BASE_STEPS:-100}
    # cpu-tiny's shape (128 wide, 4 layers, context 128) with the 10k tokenizer
    PRETRAIN=(--config train/cpu-tiny --device cpu --log-interval 25 --eval-interval 0 --eval-batches 4)
    ALIGN=(--device cpu --name alignment_gpu_quick --plots-dir "$OUT/img" --sft-steps 40 --sft-round 20
           --sft-batch 8 --sft-examples 2000 --dev-problems 50 --eval-problems 50 --grpo-steps 6 --grpo-prompts 8
           --grpo-eval-interval 3 --dpo-steps 6 --dpo-batch 8 --dpo-pairs 200 --dpo-eval-interval 3
           --eval-limit 10 --eval-max-new-tokens 48 --eval-batch 16)
    PPL_BYTES=100000
else
    TEXTS=("$DATA"/gutenberg-0*.txt.xz)
    # 1200 steps x 64 x 512 = 39M tokens (0.85 passes over the 46M tokens of the 13 files): 141 s at ~520k
    # tokens/s on an H100, 2 min 45 s with compilation and evals, so the whole script fits a 10-minute slot
    BASE_STEPS=${BASE_STEPS:-1200}
    PRETRAIN=(--device cuda --dtype bfloat16 --compile --model.context-length 512 --model.d-model 768
              --model.n-layers 12 --model.n-heads 12 --model.d-ff 2048 --batch-size 64 --optimizer.lr 1.5e-3
              --optimizer.weight-decay 0.1 --schedule.warmup-steps 100 --schedule.min-lr-ratio 0.1
              --log-interval 100 --eval-interval 500 --eval-batches 20 --checkpoint-interval 0)
    ALIGN=(--device cuda)
    PPL_BYTES=1000000
fi

# 1) tokens: training text and validation text with the 10k tokenizer (vocab padded to 10048: a multiple of 64
#    keeps the LM head GEMM fast, and the chat tokens of SFT then fit without a resize)
[ -f "$WORK/train.bin.json" ] || $PYTHON -m scratchlm tokenizer encode --tokenizer "$DATA/tok10k" --no-progress \
    --input "${TEXTS[@]}" --out "$WORK/train.bin"
[ -f "$WORK/val.bin.json" ] || $PYTHON -m scratchlm tokenizer encode --tokenizer "$DATA/tok10k" --no-progress \
    --input "$DATA/gutenberg-valid.txt.xz" --out "$WORK/val.bin"
# the head of the validation text as plain text, for the report cards' perplexity task
$PYTHON -c 'import lzma, sys; sys.stdout.write(lzma.open(sys.argv[1], "rt", encoding="utf-8").read(int(sys.argv[2])))' \
    "$DATA/gutenberg-valid.txt.xz" "$PPL_BYTES" > "$WORK/gutenberg-valid-head.txt"

# 2) the base model
rm -rf "$OUT/base"
time $PYTHON -m scratchlm train "${PRETRAIN[@]}" --model.vocab-size 10048 --steps "$BASE_STEPS" --no-keep-best \
    --data.train "$WORK/train.bin" --data.val "$WORK/val.bin" --data.tokenizer "$DATA/tok10k" --out "$OUT/base"

# 3) SFT, GRPO, DPO and report cards from it
time $PYTHON benchmarks/alignment.py --base "$OUT/base" --out "$OUT/runs" \
    --perplexity-text "$WORK/gutenberg-valid-head.txt" "${ALIGN[@]}"
