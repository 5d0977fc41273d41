#!/usr/bin/env bash
# The CPU benchmark behind docs/ad-distill.md: bottle first, then the three PIPED sets.
# Every run takes the shared lock separately so timings are not disturbed by other benchmarks.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/ad-distill/results.jsonl}
RUN="env OMP_NUM_THREADS=2 ADCORE_PROGRESS=0 .venv/bin/python benchmarks/ad-distill/run.py"
LOCK=/tmp/adcore-bench.lock
# the CPU training budgets (paper: 60k teacher iterations, 70k student iterations)
EAD='{"width": 0.25, "teacher_channels": 64, "teacher_steps": 40, "teacher_batch_size": 8, "teacher_learning_rate": 0.001, "train_steps": 110, "batch_size": 4, "learning_rate": 0.001}'
ST='{"receptive_fields": [33], "width": 0.25, "descriptor_dim": 64, "num_students": 3, "teacher_steps": 40, "teacher_batch_size": 8, "teacher_learning_rate": 0.001, "train_steps": 110, "batch_size": 4, "learning_rate": 0.001}'
for cat in ${CATEGORIES:-bottle}; do
  if [ "$cat" = bottle ]; then root=/work/shared/data/mvtec_bottle; else root=/work/shared/data/piped; fi
  for model in ${MODELS:-efficientad student_teacher}; do
    if [ "$model" = efficientad ]; then params=$EAD; else params=$ST; fi
    flock $LOCK $RUN "$model" "$root" "$cat" --params "$params" --out "$OUT"
  done
done
