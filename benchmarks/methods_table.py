"""Print markdown tables of the newest run of each method in an MLflow experiment: training
(kNN monitor, loss, collapse, speed) and evaluation (``ssl-ray evaluate``'s protocols), with
the baselines the evaluation measured."""

import sys

from mlflow.tracking import MlflowClient

from ssl_ray.tracking.mlflow_run import resolve_tracking_uri


def pct(metrics: dict, key: str) -> str:
    return f"{100 * metrics[key]:.1f}%" if key in metrics else "-"


client = MlflowClient(resolve_tracking_uri(None))
experiment = client.get_experiment_by_name(sys.argv[1])
runs = client.search_runs(
    # An unfinished run (stopped, crashed) has no final metrics: the newest finished one counts.
    [experiment.experiment_id],
    "tags.`mlflow.parentRunId` IS NULL and attributes.status = 'FINISHED'",
    order_by=["attributes.start_time DESC"],
)
newest = {}
for run in runs:
    newest.setdefault(run.data.params["method.name"], run)
supervised = newest.pop("supervised", None)

print(
    "| method | kNN top-1 trained | random init | final loss | collapse std x sqrt(D) | collapse rank | images/s | minutes |"
)
print("|---|---|---|---|---|---|---|---|")
for name, run in sorted(newest.items()):
    m, p = run.data.metrics, run.data.params
    # The monitors' embedding: the projection, or (DINO, whose head is K wide) the encoder's
    # features, 8 x width for the basic-block ResNets of the Fashion-MNIST pipelines.
    dim = int(p.get("method.projection_dim") or 8 * int(p["model.width"]))
    minutes = (run.info.end_time - run.info.start_time) / 60000 if run.info.end_time else float("nan")
    print(
        f"| {name} | {pct(m, 'knn_top1')} | {pct(m, 'knn_top1_init')} | {m['loss']:.3f} "
        f"| {m['collapse_std'] * dim**0.5:.2f} | {m['collapse_rank']:.1f} | {m['images_per_s']:.0f} | {minutes:.1f} |"
    )

tuned = [
    key
    for kind in ("finetune_top1_", "distill_top1_")
    for key in sorted({k.split("/")[-1] for r in newest.values() for k in r.data.metrics if kind in k})
]
dense = [k for k in ("segment_miou", "segment_pixel_acc") if any(f"eval/{k}" in r.data.metrics for r in runs)]
header = ["kNN k 200", "kNN k 20", "linear top-1"] + [
    t.replace("finetune_top1_", "fine-tuned ").replace("distill_top1_", "distilled ") for t in tuned
]
header += [{"segment_miou": "segment mIoU", "segment_pixel_acc": "pixel accuracy"}[k] for k in dense]
keys = ["knn_top1_k200", "knn_top1_k20", "linear_top1", *tuned, *dense]
print("\n| encoder | " + " | ".join(header) + " |")
print("|---" * (len(header) + 1) + "|")
baselines = {}
for name, run in sorted(newest.items()):
    m = run.data.metrics
    print(f"| {name} | " + " | ".join(pct(m, f"eval/{k}") for k in keys) + " |")
    for scope, label in (("random_init", "random-init encoder"), ("raw_pixels", "raw pixels")):
        if any(k.startswith(f"eval/{scope}/") for k in m):
            baselines[label] = {k: m.get(f"eval/{scope}/{k}") for k in keys}
if supervised is not None and any(k.startswith("eval/") for k in supervised.data.metrics):
    # The segment protocol evaluates the supervised reference too: the encoder trained on labels.
    m = supervised.data.metrics
    print("| supervised (on the labels) | " + " | ".join(pct(m, f"eval/{k}") for k in keys) + " |")
for label, values in baselines.items():
    cells = [f"{100 * v:.1f}%" if v is not None else "-" for v in values.values()]
    print(f"| {label} | " + " | ".join(cells) + " |")
if supervised is not None:
    m, epochs = supervised.data.metrics, supervised.data.params["train.epochs"]
    print(
        f"\nSupervised reference (the same encoder, loop and {epochs} epochs, all labels): its classifier "
        f"{pct(m, 'test_top1')} top-1, kNN k 200 on its features {pct(m, 'knn_top1')}."
    )
