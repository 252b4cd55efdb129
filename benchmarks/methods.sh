#!/usr/bin/env bash
# Every method from its own pipelines/<method>_<dataset>.yaml at one budget on this machine,
# each then evaluated with `ssl-ray evaluate` (kNN, linear probe, fine-tuning on a share of the
# labels), the baselines once (random init, raw pixels, the same fine-tuning from scratch),
# then the supervised reference at the same budget, then the tables read back from MLflow.
#   bash benchmarks/methods.sh [EPOCHS] [METHOD ...]
# Environment: DATASET the pipelines' data (fashion_mnist, the default, or openclipart: then the
# methods that have an OpenClipart pipeline), PROTOCOLS the evaluation's (default "knn linear
# finetune"), EVAL_TRAIN / EVAL_TEST cap its labelled sets (default: all), LABELS the
# fine-tuning shares (default "10%"; "1% 10%" for both), FINETUNE_EPOCHS its epochs (default
# 30), KNN_EVERY the pretraining's kNN monitor interval in epochs (default 1; the evaluation
# measures kNN again at the end), BASELINES=0 to skip the baselines (a continued table whose
# first part measured them), DISTILL=1 to distil each fine-tuned network into a student too
# (SimCLR v2's third step), SUPERVISED=0 to skip the supervised reference (a continued table
# whose first part ran it), EXPERIMENT the MLflow experiment (default methods-<EPOCHS>ep), OVERRIDES extra section.field=value settings of every pretraining
# (the same encoder for all: "model.stem_stride=1"), SCENES the scene shards of the segment
# protocol (with "segment" in PROTOCOLS; the supervised reference is then evaluated too: the
# dense table's supervised-on-classification encoder).
set -euo pipefail
cd "$(dirname "$0")/.."
epochs="${1:-2}"
shift || true
methods=("$@")
dataset="${DATASET:-fashion_mnist}"
# Default: every registered method with a pipeline for the dataset but the supervised reference
# (run at the end) and the distillation (a protocol of the evaluation: DISTILL=1).
[[ ${#methods[@]} -gt 0 ]] || mapfile -t methods < <(.venv/bin/python -c '
import sys
from pathlib import Path
from ssl_ray.methods import METHODS
names = set(METHODS) - {"supervised", "distill"}
print("\n".join(sorted(n for n in names if Path(f"pipelines/{n}_{sys.argv[1]}.yaml").is_file())))' "$dataset")
experiment="methods-${epochs}ep"
[[ $dataset == fashion_mnist ]] || experiment="methods-${dataset//_/-}-${epochs}ep"
experiment="${EXPERIMENT:-$experiment}"
sizes=()
[[ -n "${EVAL_TRAIN:-}" ]] && sizes+=(--train-size "$EVAL_TRAIN")
[[ -n "${EVAL_TEST:-}" ]] && sizes+=(--test-size "$EVAL_TEST")
protocols=(--no-diagnostics)
for protocol in ${PROTOCOLS:-knn linear finetune}; do protocols+=(--protocol "$protocol"); done
if [[ " ${PROTOCOLS:-finetune} " == *" finetune "* ]]; then
  protocols+=(--finetune-epochs "${FINETUNE_EPOCHS:-30}")
  for share in ${LABELS:-10%}; do protocols+=(--labels "$share"); done
fi
[[ ${DISTILL:-0} == 1 ]] && protocols+=(--protocol distill)
[[ " ${PROTOCOLS:-} " == *" segment "* ]] && protocols+=(--scenes "${SCENES:?SCENES: the scene shards of the segment protocol}")
read -ra overrides <<<"${OVERRIDES:-}"
first=${BASELINES:-1}
for method in "${methods[@]}"; do
  out=$(.venv/bin/ssl-ray pretrain "pipelines/${method}_${dataset}.yaml" "train.epochs=${epochs}" \
    "tracking.experiment=${experiment}" "train.run_name=bench-${method}" "eval.knn_raw_pixels=false" \
    "eval.knn_every_epochs=${KNN_EVERY:-1}" "${overrides[@]}" | tee >(cat >&2))  # not /dev/stderr: reopening truncates a log file
  run_id=$(grep -oP 'MLflow run id:\s+\K\w+' <<<"$out")
  # The baselines do not depend on the method: measured with the first one only.
  extra=(eval.knn_raw_pixels=true)  # the pretraining skipped it; the evaluation's baseline
  [[ $first == 1 ]] || extra=(--no-baselines)
  first=0
  .venv/bin/ssl-ray evaluate "$run_id" "${protocols[@]}" "${sizes[@]}" "${extra[@]}"
done
# The supervised reference: the same encoder, loop and epochs on all the labels.
if [[ ${SUPERVISED:-1} == 1 ]]; then
  out=$(.venv/bin/ssl-ray pretrain "pipelines/supervised_${dataset}.yaml" "train.epochs=${epochs}" \
    "tracking.experiment=${experiment}" "train.run_name=bench-supervised" "eval.knn_raw_pixels=false" \
    "eval.knn_at_init=false" "${overrides[@]}" | tee >(cat >&2))
  if [[ " ${PROTOCOLS:-} " == *" segment "* ]]; then
    .venv/bin/ssl-ray evaluate "$(grep -oP 'MLflow run id:\s+\K\w+' <<<"$out")" "${protocols[@]}" "${sizes[@]}" --no-baselines
  fi
fi
.venv/bin/python benchmarks/methods_table.py "${experiment}"
