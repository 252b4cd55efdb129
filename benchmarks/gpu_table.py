"""The table of benchmarks/gpu_pipeline.sh, read back from what its runs wrote to OUT: the
MLflow store (each pipeline-fed run's epochs, images/s, kNN curve and end-of-run linear probe)
and the synthetic step's figures beside them, with the pipeline-fed / synthetic ratio.

    python benchmarks/gpu_table.py OUT
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def main() -> None:
    out = Path(sys.argv[1]).resolve()
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("gpu-pipeline")
    if experiment is None:
        raise SystemExit(f"gpu_table: no gpu-pipeline experiment in {out / 'mlflow.db'}")
    device = (
        (out / "device.txt").read_text().strip().removeprefix("gpu_pipeline: ")
        if (out / "device.txt").exists()
        else "cpu"
    )
    print(f"Device: {device}\n")
    print(
        "| method | epochs | epoch time s (median) | pipeline-fed img/s (median, epochs 2+) | synthetic img/s | ratio "
        "| kNN top-1: init -> every few epochs | linear top-1 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for run in sorted(client.search_runs([experiment.experiment_id]), key=lambda r: r.info.start_time):
        method = run.data.params.get("method.name", "?")
        speeds = [v for step, v in history(client, run.info.run_id, "images_per_s") if step > 1]
        speeds = speeds or [v for _, v in history(client, run.info.run_id, "images_per_s")]
        times = [v for _, v in history(client, run.info.run_id, "epoch_time_s")]
        knn = history(client, run.info.run_id, "knn_top1")
        synthetic_file = out / f"synthetic_{method}.json"
        synthetic = json.loads(synthetic_file.read_text())["images_per_s_median"] if synthetic_file.exists() else None
        fed = statistics.median(speeds) if speeds else None
        ratio = f"{fed / synthetic:.2f}" if fed and synthetic else "-"
        curve = " -> ".join(f"{100 * v:.1f}% (ep {s})" for s, v in knn)
        linear = run.data.metrics.get("eval/linear_top1")
        print(
            f"| {method} | {len(times)} | {statistics.median(times):.1f} | {fed:.0f} | "
            f"{synthetic:.0f} | {ratio} | {curve} | {100 * linear:.1f}% |"
            if fed and synthetic and times and linear is not None
            else f"| {method} | {len(times)} | - | {fed or '-'} | {synthetic or '-'} | {ratio} | {curve} | "
            f"{'-' if linear is None else f'{100 * linear:.1f}%'} |"
        )


if __name__ == "__main__":
    main()
