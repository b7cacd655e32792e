#!/usr/bin/env bash
# Reproduce the paper's Table II (MNIST, small CNN: dense vs spinal 6x8 and
# 6x10) and Table I (8-variable regression) with the spinalnet-keras command.
#
#   bash benchmarks/reproduce_paper.sh            # 5 seeds, as in RESULTS.md
#   SEEDS="0 1" OUT=runs/quick bash benchmarks/reproduce_paper.sh
#
# MNIST is read offline from MANUAL_DIR (default ../shared/data, which holds
# an mnist/ folder with the four original files); without it tfds downloads.
# Completed runs are skipped, interrupted ones resume.
set -euo pipefail
OUT=${OUT:-runs/paper}
SEEDS=${SEEDS:-"0 1 2 3 4"}
MANUAL_DIR=${MANUAL_DIR:-../shared/data}
manual=()
[ -d "$MANUAL_DIR" ] && manual=(--manual-dir "$MANUAL_DIR")

# Table II: the paper's recipe, SGD lr 0.01 momentum 0.5, batch 64, 8 epochs.
for width in 8 10; do
  spinalnet-keras compare --model mnist_cnn --dataset mnist "${manual[@]}" \
    --width "$width" --depth 6 --epochs 8 --batch-size 64 --optimizer sgd \
    --learning-rate 0.01 --momentum 0.5 --seeds $SEEDS \
    --output-dir "$OUT/table2" --verbose 0
done

# Table I: Adam lr 0.01, batch 64, 200 epochs, four targets.
spinalnet-keras demo --epochs 200 --seeds $SEEDS --output-dir "$OUT/table1"
