#!/usr/bin/env bash
# Inference with trained models, for what random weights cannot show (speculative acceptance): pretrain a
# target and a small draft on Gutenberg with the same 10k tokenizer, then run benchmarks/inference.py on the
# pair with real-text prompts (results: benchmarks/results/inference_trained.{json,md}).
#
#   bash benchmarks/inference_trained.sh OUT_DIR     # DATA: folder with gutenberg-*.txt.xz and tok10k/
#   QUICK=1 bash benchmarks/inference_trained.sh /tmp/it    # CPU smoke test of the script (tiny models)
#   BENCH_ARGS="--batches 1 --no-hf --ks 2,4" bash benchmarks/inference_trained.sh OUT_DIR   # other bench flags
set -euo pipefail
OUT=${1:?usage: benchmarks/inference_trained.sh OUT_DIR}
DATA=${DATA:-local_data/gpu}
SCRATCHLM=${SCRATCHLM:-scratchlm}
mkdir -p "$OUT"
if [ -n "${QUICK:-}" ]; then  # tiny everything; the numbers mean nothing
    SHARDS=("$DATA/gutenberg-000.txt.xz"); TARGET=(--model.d-model 64 --model.n-layers 2 --model.n-heads 2)
    DRAFT=(--model.d-model 32 --model.n-layers 1 --model.n-heads 2); STEPS=(--steps 20 --batch-size 4)
    COMMON=(--device cpu --no-compile --model.context-length 128); BENCH=(--device cpu --batches 1,2 --prompt-len 16
    --new-tokens 16 --prefill-len 64 --ks 2 --repeats 1 --no-hf --threads 1 --results-name inference_trained_quick)
else  # target: GPT-2 small's shape (85M parameters with this vocabulary); draft: 2 x 256 (3M)
    SHARDS=("$DATA"/gutenberg-0*.txt.xz); TARGET=(--model.d-model 768 --model.n-layers 12 --model.n-heads 12)
    DRAFT=(--model.d-model 256 --model.n-layers 2 --model.n-heads 4); STEPS=(--steps "${STEPS:-1500}" --batch-size 32)
    COMMON=(--model.context-length 512); BENCH=(--temperatures 0,1 --repeats 2 --profile 15)
fi
[ -n "${BENCH_ARGS:-}" ] && read -ra BENCH <<< "$BENCH_ARGS"
[ -f "$OUT/train.bin.json" ] || $SCRATCHLM tokenizer encode --tokenizer "$DATA/tok10k" --no-progress \
    --input "${SHARDS[@]}" --out "$OUT/train.bin"
[ -f "$OUT/val.bin.json" ] || $SCRATCHLM tokenizer encode --tokenizer "$DATA/tok10k" --no-progress \
    --input "$DATA/gutenberg-valid.txt.xz" --out "$OUT/val.bin"
for model in target draft; do
    [ "$model" = target ] && SHAPE=("${TARGET[@]}") || SHAPE=("${DRAFT[@]}")
    [ -f "$OUT/$model/checkpoint.pt" ] || $SCRATCHLM train --config train/gpt2-small-124m "${SHAPE[@]}" \
        "${COMMON[@]}" "${STEPS[@]}" --grad-accum 1 --model.vocab-size 10000 --schedule.warmup-steps 100 \
        --optimizer.lr 1e-3 --data.train "$OUT/train.bin" --data.val "$OUT/val.bin" --data.tokenizer "$DATA/tok10k" \
        --eval-interval 500 --checkpoint-interval 100000 --log-interval 100 --out "$OUT/$model"
done
python -c "import lzma, sys; print(lzma.open(sys.argv[1], 'rt').read(400000))" "$DATA/gutenberg-valid.txt.xz" \
    > "$OUT/prompts.txt"  # held-out text
python benchmarks/inference.py --target-checkpoint "$OUT/target" --draft-checkpoint "$OUT/draft" \
    --prompt-text "$OUT/prompts.txt" --tokenizer "$DATA/tok10k" "${BENCH[@]}"
