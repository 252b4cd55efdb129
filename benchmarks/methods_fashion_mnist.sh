#!/usr/bin/env bash
# Every method from its own pipelines/<method>_fashion_mnist.yaml at one budget on this machine,
# each then evaluated with `ssl-ray evaluate` (kNN, linear probe, fine-tuning on a share of the
# labels), the baselines once (random init, raw pixels, the same fine-tuning from scratch),
# then the supervised reference at the same budget, then the tables read back from MLflow.
#   bash benchmarks/methods_fashion_mnist.sh [EPOCHS] [METHOD ...]
# Environment: EVAL_TRAIN / EVAL_TEST cap the evaluation's labelled sets (default: all 60,000 /
# 10,000), LABELS the fine-tuning shares (default "10%"; "1% 10%" for both), FINETUNE_EPOCHS its
# epochs (default 30), KNN_EVERY the pretraining's kNN monitor interval in epochs (default 1; the
# evaluation measures kNN again at the end), BASELINES=0 to skip the baselines (a continued
# table whose first part measured them), DISTILL=1 to distil each fine-tuned network into a
# student too (SimCLR v2's third step), SUPERVISED=0 to skip the supervised reference (a
# continued table whose first part ran it).
set -euo pipefail
cd "$(dirname "$0")/.."
epochs="${1:-2}"
shift || true
methods=("$@")
# Default: every registered method but the supervised reference (run at the end) and the
# distillation (a protocol of the evaluation: DISTILL=1).
[[ ${#methods[@]} -gt 0 ]] || mapfile -t methods < <(.venv/bin/python -c \
  'from ssl_ray.methods import METHODS; print("\n".join(sorted(set(METHODS) - {"supervised", "distill"})))')
experiment="methods-${epochs}ep"
sizes=()
[[ -n "${EVAL_TRAIN:-}" ]] && sizes+=(--train-size "$EVAL_TRAIN")
[[ -n "${EVAL_TEST:-}" ]] && sizes+=(--test-size "$EVAL_TEST")
protocols=(--protocol knn --protocol linear --protocol finetune --finetune-epochs "${FINETUNE_EPOCHS:-30}" --no-diagnostics)
for share in ${LABELS:-10%}; do protocols+=(--labels "$share"); done
[[ ${DISTILL:-0} == 1 ]] && protocols+=(--protocol distill)
first=${BASELINES:-1}
for method in "${methods[@]}"; do
  out=$(.venv/bin/ssl-ray pretrain "pipelines/${method}_fashion_mnist.yaml" "train.epochs=${epochs}" \
    "tracking.experiment=${experiment}" "train.run_name=bench-${method}" "eval.knn_raw_pixels=false" \
    "eval.knn_every_epochs=${KNN_EVERY:-1}" | tee >(cat >&2))  # not /dev/stderr: reopening truncates a log file
  run_id=$(grep -oP 'MLflow run id:\s+\K\w+' <<<"$out")
  # The baselines do not depend on the method: measured with the first one only.
  extra=(eval.knn_raw_pixels=true)  # the pretraining skipped it; the evaluation's baseline
  [[ $first == 1 ]] || extra=(--no-baselines)
  first=0
  .venv/bin/ssl-ray evaluate "$run_id" "${protocols[@]}" "${sizes[@]}" "${extra[@]}"
done
# The supervised reference: the same encoder, loop and epochs on all the labels.
[[ ${SUPERVISED:-1} == 1 ]] && .venv/bin/ssl-ray pretrain pipelines/supervised_fashion_mnist.yaml "train.epochs=${epochs}" \
  "tracking.experiment=${experiment}" "train.run_name=bench-supervised" "eval.knn_raw_pixels=false" \
  "eval.knn_at_init=false"
.venv/bin/python benchmarks/methods_table.py "${experiment}"
