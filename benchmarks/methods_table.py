"""Print a markdown table of the newest run of each method in an MLflow experiment."""

import sys

from mlflow.tracking import MlflowClient

from ssl_ray.tracking.mlflow_run import resolve_tracking_uri

client = MlflowClient(resolve_tracking_uri(None))
experiment = client.get_experiment_by_name(sys.argv[1])
runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
newest = {}
for run in runs:
    newest.setdefault(run.data.params["method.name"], run)
print("| method | kNN top-1 trained | random init | final loss | collapse std x sqrt(D) | collapse rank | minutes |")
print("|---|---|---|---|---|---|---|")
for name, run in sorted(newest.items()):
    m, p = run.data.metrics, run.data.params
    dim = int(p["method.projection_dim"])
    minutes = (run.info.end_time - run.info.start_time) / 60000 if run.info.end_time else float("nan")
    print(
        f"| {name} | {100 * m['knn_top1']:.1f}% | {100 * m['knn_top1_init']:.1f}% | {m['loss']:.3f} "
        f"| {m['collapse_std'] * dim**0.5:.2f} | {m['collapse_rank']:.1f} | {minutes:.1f} |"
    )
