#!/usr/bin/env bash
# Every method from its own pipelines/<method>_fashion_mnist.yaml at one budget on this machine,
# then a table of kNN top-1 (trained vs random init) read back from MLflow.
#   bash benchmarks/methods_fashion_mnist.sh [EPOCHS] [METHOD ...]
set -euo pipefail
cd "$(dirname "$0")/.."
epochs="${1:-2}"
shift || true
methods=("$@")
[[ ${#methods[@]} -gt 0 ]] || methods=(simclr moco_v1 moco_v2 moco_v3 byol simsiam)
experiment="methods-${epochs}ep"
for method in "${methods[@]}"; do
  .venv/bin/ssl-ray pretrain "pipelines/${method}_fashion_mnist.yaml" "train.epochs=${epochs}" \
    "tracking.experiment=${experiment}" "train.run_name=bench-${method}" "eval.knn_raw_pixels=false"
done
.venv/bin/python benchmarks/methods_table.py "${experiment}"
