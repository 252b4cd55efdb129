#!/usr/bin/env bash
# The product's whole path on one GPU machine: `ssl-ray pretrain` of SimCLR's full recipe on
# Fashion-MNIST (Ray Data -> Ray Train on the GPU -> MLflow), then the same config's step on
# synthetic batches already on the GPU (benchmarks/gpu_synthetic.py), and the table of both
# (benchmarks/gpu_table.py), written with the logs and the MLflow store to OUT.
#   BUNDLE=gpu-bundle SSL_RAY_FASHION_MNIST=DIR OUT=DIR bash benchmarks/gpu_pipeline.sh
# Environment:
#   BUNDLE     the offline bundle's folder (scripts/gpu_bundle.py), installed first with the
#              machine's python3 (scripts/gpu_install.py); unset: the packages are there already
#   PYTHON     the interpreter (default .venv/bin/python where there is one, else python3)
#   OUT        where the table, logs and MLflow store go (default gpu-results)
#   EPOCHS     SimCLR's epochs (default 50); METHODS the methods (default simclr; "simclr byol
#              moco_v3" for the others at SHORT_EPOCHS, default 10)
#   KNN_EVERY  the kNN monitor's interval in epochs (default 5)
#   USE_GPU    1 (default) or 0: the same script on CPUs, for a check with a tiny budget
#   EXTRA      more overrides for every run, e.g. "data.train_subset=2048 model.width=8"
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${OUT:-gpu-results}")
mkdir -p "$out"
python=${PYTHON:-}
if [[ -z $python ]]; then if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ -n ${BUNDLE:-} ]]; then
  "$python" scripts/gpu_install.py "$BUNDLE" --target /tmp/ssl-ray-site | tee "$out/install.log"
  export PYTHONPATH="/tmp/ssl-ray-site:$PYTHONPATH" PATH="/tmp/ssl-ray-site/bin:$PATH"
fi
export RAY_DISABLE_USAGE_STATS=1 PYTHONUNBUFFERED=1
use_gpu=${USE_GPU:-1}
gpus=0
if [[ $use_gpu == 1 ]]; then
  gpus=$("$python" -c 'import torch; print(torch.cuda.device_count())')
  [[ $gpus -ge 1 ]] || { echo "gpu_pipeline: torch sees no GPU here (USE_GPU=0 runs the CPU check)" >&2; exit 1; }
  "$python" -c 'import torch; print("gpu_pipeline:", torch.cuda.get_device_name(), "torch", torch.__version__)' | tee "$out/device.txt"
fi
cores=$(nproc)
# One local cluster on loopback with the machine's cores and GPUs, token-authenticated, in a
# session of its own: every run below joins it, and only it is stopped at the end (`ray stop`
# would end every Ray cluster of the machine).
ray_dir=$(mktemp -d /tmp/ray-gpu-XXXX)
port=${RAY_PORT:-6391}
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$("$python" -c 'import secrets; print(secrets.token_hex(16))')
setsid "$python" -m ray.scripts.scripts start --head --block --node-ip-address=127.0.0.1 --port="$port" \
  --num-cpus="$cores" --num-gpus="$gpus" --include-dashboard=false --disable-usage-stats --temp-dir="$ray_dir" \
  > "$out/ray_head.log" 2>&1 &
head_pid=$!
trap 'kill -KILL -- -$head_pid 2>/dev/null || true; rm -rf "$ray_dir"' EXIT
export RAY_ADDRESS=127.0.0.1:$port
for _ in $(seq 60); do
  "$python" -c 'import ray; ray.init(logging_level="ERROR"); ray.shutdown()' > /dev/null 2>&1 && break
  kill -0 "$head_pid" 2>/dev/null || { echo "gpu_pipeline: the Ray head did not start ($out/ray_head.log)" >&2; exit 1; }
  sleep 1
done
gpu_settings=(train.num_workers=1 "train.use_gpu=$([[ $use_gpu == 1 ]] && echo true || echo false)")
# The training worker takes two cores (its step only feeds the GPU); Ray Data the rest.
gpu_settings+=(train.cpus_per_worker=2 "eval.knn_every_epochs=${KNN_EVERY:-5}" eval.linear_probe_at_end=true)
gpu_settings+=("tracking.tracking_uri=sqlite:///$out/mlflow.db" tracking.experiment=gpu-pipeline)
gpu_settings+=("train.storage_path=$out/ray_results" tracking.register_model=false)
[[ $use_gpu == 1 ]] || gpu_settings+=(augment.on=device)  # the CPU check takes the GPU's path for the views
read -r -a extra <<< "${EXTRA:-}"
for method in ${METHODS:-simclr}; do
  pipeline=pipelines/${method}_fashion_mnist_full.yaml
  epochs=${EPOCHS:-50}
  shape=()
  if [[ ! -f $pipeline ]]; then  # the demo pipeline with SimCLR's full-recipe encoder and batch
    pipeline=pipelines/${method}_fashion_mnist.yaml
    epochs=${SHORT_EPOCHS:-10}
    shape=(model.backbone=resnet18 model.width=64 train.batch_size=512 train.precision=bf16)
  fi
  run=("${gpu_settings[@]}" "${shape[@]}" "train.epochs=$epochs" "train.run_name=gpu-$method" "${extra[@]}")
  echo "gpu_pipeline: $method, $epochs epochs, pipeline-fed (ssl-ray pretrain)"
  "$python" -m ssl_ray.cli pretrain "$pipeline" "${run[@]}" 2>&1 | tee "$out/pretrain_$method.log"
  echo "gpu_pipeline: $method, the same step on synthetic batches on the device"
  "$python" benchmarks/gpu_synthetic.py "$pipeline" "${run[@]}" --json "$out/synthetic_$method.json" \
    ${SYNTHETIC_STEPS:+--steps "$SYNTHETIC_STEPS"} | tee "$out/synthetic_$method.log"
done
"$python" benchmarks/gpu_table.py "$out" | tee "$out/gpu_table.md"
