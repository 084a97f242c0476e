#!/usr/bin/env bash
# The committed accuracy run (benchmarks/fashion_mnist.md): Fashion-MNIST at 96x96, MobileNetV2
# 1.0 from the offline pretrained backbone vs the same budget from random weights, then every
# export format evaluated on the full 10,000-image test split.
#
#   apt-get install dataset-fashion-mnist      # or put the four .gz files in $TLEDGE_DATA_DIR
#   bash benchmarks/fashion_mnist.sh [OUT_DIR] [WEIGHTS]
#
# About 1.5 hours on 2 CPU cores (most of it fine-tuning and QAT).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-models/fashion_mnist}
WEIGHTS=${2:-../shared/weights/mobilenet_v2_1.0_no_top_stanford_dogs.h5}
TLEDGE=${TLEDGE:-.venv/bin/tledge}
COMMON=(--data fashion_mnist --image-size 96 --limit 2000 --val-split 0.1 --no-augment
        --head-units 256 --dropout 0.3 --epochs-frozen 10 --lr 1e-3 --epochs-finetune 4
        --unfreeze all --batch-size 32 --seed 42
        # what tledge's defaults were when the figures were recorded (they have moved since,
        # benchmarks/recipe.md): the head at a constant rate on raw features, no smoothing
        --lr-schedule-frozen constant --no-feature-norm --label-smoothing 0 --warmup 0)

# Transfer: frozen head, then the whole backbone fine-tuned from 1e-4 with cosine decay, then
# one epoch of QAT at 1e-5.
$TLEDGE train "${COMMON[@]}" --weights "$WEIGHTS" --lr-finetune 1e-4 --lr-schedule cosine \
    --epochs-qat 1 --lr-qat 1e-5 --out "$OUT/transfer" --overwrite
# Scratch: the same data, epochs and phases from random weights, fine-tuned at a constant 1e-4
# (no decay: the higher rate throughout favours the random start).
$TLEDGE train "${COMMON[@]}" --weights none --lr-finetune 1e-4 --lr-schedule constant --no-qat \
    --out "$OUT/scratch" --overwrite

# Every format; int8 twice: from the QAT model and by post-training quantization.
$TLEDGE export "$OUT/transfer" --fp32 --fp16 --dynamic --int8 --overwrite
$TLEDGE export "$OUT/transfer" --int8 --ptq --out "$OUT/transfer/export_ptq" --overwrite
for model in "$OUT"/transfer/export/model_*.tflite "$OUT"/transfer/export_ptq/model_int8.tflite; do
    $TLEDGE evaluate "$model" --data fashion_mnist --overwrite
done
$TLEDGE evaluate "$OUT/transfer" --data fashion_mnist --overwrite
.venv/bin/python benchmarks/fashion_mnist_table.py "$OUT" > benchmarks/fashion_mnist.md
