"""``ssl-ray evaluate`` end to end: the suite's short Fashion-MNIST pretraining (conftest.py),
with checkpoints in the S3 server, then the protocols from its MLflow run id (the CLI, every protocol, baselines,
diagnostics), from its registered model and from its checkpoint in the bucket (in process,
sharing one Ray): all three must see the same encoder. And few-label fine-tuning."""

from __future__ import annotations

import dataclasses
import os
import re

import mlflow.pytorch
import numpy as np
import pytest
import ray
import torch
import yaml
from cli import ONE_WORKER, joined_to_the_shared_head, run_cli
from mlflow.tracking import MlflowClient
from PIL import Image

from ssl_ray.cli import build_parser
from ssl_ray.config import ConfigError, config_from_dict
from ssl_ray.data.fashion_mnist import load_split
from ssl_ray.data.prepare import PrepareOptions, prepare
from ssl_ray.data.subsets import stratified_sample
from ssl_ray.eval.encoders import load_encoder
from ssl_ray.eval.evaluate import EvaluateOptions, Evaluation
from ssl_ray.eval.evaluate import evaluate as evaluate_encoder
from ssl_ray.nn.backbones import build_backbone
from ssl_ray.tracking.mlflow_run import mlflow_tracking_uri

EVAL_SIZES = ["--train-size", "1000", "--test-size", "300"]


@pytest.fixture(scope="module")
def pretrained(simclr_pretrained, mlflow_server):
    """The suite's short SimCLR pretraining (conftest.py), checkpointed into the S3 server."""
    done = simclr_pretrained["done"]
    run_id = re.search(r"MLflow run id:\s+(\w+)", done.stdout).group(1)
    checkpoint = re.search(r"checkpoint: (s3://\S+)\)", done.stdout).group(1)
    # eval.linear_probe_at_end: the probe ran into the run before the command returned.
    assert "Linear probe at the end" in done.stdout, done.stdout[-3000:]
    probe = MlflowClient(mlflow_server).get_run(run_id).data.metrics["eval/linear_top1"]
    return {**simclr_pretrained, "run_id": run_id, "checkpoint": checkpoint, "probe_at_end": probe}


def evaluate(source: str, mlflow_server: str, *extra: str, cwd) -> str:
    done = run_cli("evaluate", source, *EVAL_SIZES, "--tracking-uri", mlflow_server, *extra, cwd=cwd)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "Downloading artifacts" not in done.stderr  # MLflow's progress bars: not ours to show
    return done.stdout


def trained_row(output: str) -> list[str]:
    """The trained encoder's five figures as printed: kNN k10, k20, k200, linear top-1, top-5."""
    return re.findall(r"\d+\.\d%", re.search(r"^trained encoder\s+(.*)$", output, re.M).group(1))


@pytest.fixture(scope="module")
def evaluated(pretrained, mlflow_server) -> str:
    """Every frozen protocol, the baselines and the diagnostics, from the run id."""
    return evaluate(pretrained["run_id"], mlflow_server, cwd=pretrained["tmp"])


def test_evaluate_a_run_every_frozen_protocol_baselines_and_diagnostics(pretrained, evaluated, mlflow_server):
    assert 0.3 < pretrained["probe_at_end"] <= 1.0  # the pretraining's own probe (1,000 / 500 images)
    for row in ("trained encoder", "random-init encoder", "raw pixels"):
        assert re.search(rf"^{row}\s+(\d+\.\d%\s*){{5}}$", evaluated, re.M), evaluated
    client = MlflowClient(mlflow_server)
    metrics = client.get_run(pretrained["run_id"]).data.metrics  # into the pretraining's own run
    for scope in ("eval", "eval/random_init", "eval/raw_pixels"):
        for key in ("knn_top1_k10", "knn_top1_k20", "knn_top1_k200", "linear_top1", "linear_top5"):
            assert 0.3 < metrics[f"{scope}/{key}"] <= 1.0, (scope, key, metrics)
        assert metrics[f"{scope}/linear_top5"] >= metrics[f"{scope}/linear_top1"]
    assert metrics["eval/alignment"] > 0 and metrics["eval/uniformity"] < 0
    assert 1.0 < metrics["eval/effective_rank"] <= 64  # width 8: 64-d features
    tmp = str(pretrained["tmp"])
    pictures = {a.path for a in client.list_artifacts(pretrained["run_id"], "eval/diagnostics")}
    assert pictures == {f"eval/diagnostics/{n}.png" for n in ("spectrum", "tsne", "retrieval", "views")}
    for picture in pictures:
        with Image.open(client.download_artifacts(pretrained["run_id"], picture, tmp)) as image:
            assert image.format == "PNG" and min(image.size) > 200
            image.verify()
    results = client.download_artifacts(pretrained["run_id"], "eval/results.txt", tmp)
    assert "random-init encoder" in open(results).read()


@pytest.fixture(scope="module")
def local_ray():
    """The suite's Ray head, joined in-process for the evaluations below (the CLI's own path
    is tested above)."""
    with joined_to_the_shared_head():
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield


def in_process(source: str, mlflow_server: str, *overrides: str, **options) -> Evaluation:
    encoder = load_encoder(source, mlflow_server, overrides=list(overrides))
    settings = {"baselines": False, "diagnostics": False, "train_size": 1000, "test_size": 300, **options}
    return evaluate_encoder(encoder, EvaluateOptions(**settings), mlflow_server)


def figures(evaluation: Evaluation) -> list[str]:
    return trained_row(evaluation.table())


def test_the_registered_model_is_the_checkpoints_encoder(pretrained, evaluated, mlflow_server, local_ray):
    client = MlflowClient(mlflow_server)
    tmp = str(pretrained["tmp"])
    assert client.get_run(pretrained["run_id"]).data.tags["ssl_ray.registered_model"] == "e2e-encoder"
    with mlflow_tracking_uri(mlflow_server):  # and back: later tests' CLIs must not inherit it
        loaded = mlflow.pytorch.load_model("models:/e2e-encoder/1", map_location="cpu")  # exported in eval mode
        signature = mlflow.models.get_model_info("models:/e2e-encoder/1").signature
    config = config_from_dict(yaml.safe_load(open(client.download_artifacts(pretrained["run_id"], "config.yaml", tmp))))
    m = config.model
    reference, _ = build_backbone(m.backbone, 1, m.width, m.blocks, m.stem_stride, m.stem)
    weights = client.download_artifacts(pretrained["run_id"], "encoder/encoder.pt", tmp)
    reference.load_state_dict(torch.load(weights, weights_only=True))
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (16, 1, 28, 28), dtype=np.uint8))
    with torch.no_grad():
        assert torch.equal(loaded(images), reference.eval()(images))
    assert signature.inputs.to_dict()[0]["tensor-spec"]["dtype"] == "uint8"
    assert os.environ.get("MLFLOW_TRACKING_URI") != mlflow_server, "the global URI is put back"
    assert figures(in_process("models:/e2e-encoder/1", mlflow_server)) == trained_row(evaluated)


def test_evaluate_a_checkpoint_in_the_bucket(pretrained, evaluated, mlflow_server, local_ray):
    checkpoint = pretrained["checkpoint"]
    result = in_process(checkpoint, mlflow_server, f"storage.endpoint_url={pretrained['s3']}")
    assert figures(result) == trained_row(evaluated), "same weights, same images: the same figures"
    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs(
        [client.get_experiment_by_name(pretrained["experiment"]).experiment_id],
        filter_string=f"tags.`ssl_ray.evaluates` = '{checkpoint}'",
    )
    assert run.info.run_id == result.run_id and run.info.status == "FINISHED"
    assert 0.3 < run.data.metrics["eval/linear_top1"] <= 1.0


def test_the_segment_protocol_scores_the_frozen_maps_on_scenes(
    pretrained, mlflow_server, fashion_mnist_dir, local_ray, tmp_path
):
    """Fashion-MNIST scenes (``prepare --scenes``), a linear head on the run's frozen feature
    maps, on its random init's and on a reference encoder's (``--reference``; here the run's
    registered model, the same weights): mIoU and pixel accuracy into the run, the masks'
    picture; a reference that reads other images is refused before any work."""
    prepare(str(fashion_mnist_dir), str(tmp_path / "scenes"), PrepareOptions(source="fashion_mnist", scenes=64))
    reference = load_encoder("models:/e2e-encoder/1", mlflow_server)
    result = in_process(
        pretrained["run_id"],
        mlflow_server,
        protocols=("segment",),
        baselines=True,
        scenes=str(tmp_path / "scenes"),
        references=(reference,),
    )
    table = result.table()
    assert "seg mIoU" in table and "raw pixels" not in table, table  # pixels have no feature map
    assert "ref: simclr" in table, table
    metrics = MlflowClient(mlflow_server).get_run(pretrained["run_id"]).data.metrics
    for scope in ("eval", "eval/random_init"):
        # 11 classes (the background and 10 items): even one epoch's maps find the items.
        assert 0.05 < metrics[f"{scope}/segment_miou"] < metrics[f"{scope}/segment_pixel_acc"] <= 1.0, metrics
    assert metrics["eval/reference/simclr/segment_miou"] == metrics["eval/segment_miou"], "the same weights"
    assert metrics["eval/random_init/segment_miou"] != metrics["eval/segment_miou"]
    client = MlflowClient(mlflow_server)
    picture = client.download_artifacts(pretrained["run_id"], "eval/segment_masks.png", str(tmp_path))
    with Image.open(picture) as image:  # 5 rows (scenes, truth, trained, random init, reference) of 8 56 px scenes, 2x
        assert image.size == (2 * (2 + 8 * 58), 2 * (2 + 5 * 58))
    with pytest.raises(ConfigError, match="--protocol segment needs --scenes DIR"):
        EvaluateOptions(protocols=("segment",))
    colour = reference.config.model_copy(update={"data": reference.config.data.model_copy(update={"channels": 3})})
    with pytest.raises(ConfigError, match="--reference models:/e2e-encoder/1: its encoder reads 3-channel images"):
        in_process(
            pretrained["run_id"],
            mlflow_server,
            protocols=("segment",),
            scenes=str(tmp_path / "missing"),  # never read: refused first
            references=(reference, dataclasses.replace(reference, config=colour)),
        )


def test_few_label_finetuning_and_distillation_through_ray_train(
    pretrained, mlflow_server, fashion_mnist_dir, local_ray
):
    """10% of 1,000 labels (10% of each class), 10 epochs from the pretrained encoder: a run of
    the supervised method through Ray Train, nested under the pretraining's run; then that
    network distilled into a student on all 1,000 images, their labels unused (SimCLR v2's
    third step), nested the same way."""
    result = in_process(
        pretrained["run_id"],
        mlflow_server,
        *ONE_WORKER,
        protocols=("finetune", "distill"),
        label_fractions=(0.1,),
        finetune_epochs=10,
        train_size=1000,
        test_size=500,
    )
    ((tuned, distilled),) = [
        (r.metrics["finetune_top1_10pct"], r.metrics["distill_top1_10pct"]) for r in result.results
    ]
    assert tuned > 0.2, tuned  # 20 steps on 100 labels, 10 classes: well above chance
    assert distilled > 0.2, distilled  # the student of that teacher: above chance too
    assert "distilled 10pct" in result.table()
    client = MlflowClient(mlflow_server)
    children = client.search_runs(
        [client.get_experiment_by_name(pretrained["experiment"]).experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{pretrained['run_id']}'",
    )
    (child,) = [c for c in children if c.data.params["method.name"] == "supervised"]
    assert child.data.params["data.label_fraction"] == "0.1"
    assert child.info.status == "FINISHED" and child.data.metrics["test_top1"] == pytest.approx(tuned)
    path = client.download_artifacts(child.info.run_id, "labels/label_subset.txt", str(pretrained["tmp"]))
    subset = [int(i) for i in open(path).read().split()]
    # The pool is the run's class-stratified sample of 1,000 training images (its train.seed);
    # the few labels are 10% of each class of it.
    labels = load_split(str(fashion_mnist_dir), "train").labels
    pool = stratified_sample(labels, 1000, int(child.data.params["train.seed"]))
    assert set(subset) <= set(pool.tolist())
    per_class = np.bincount(labels[pool], minlength=10)
    assert np.bincount(labels[subset], minlength=10).tolist() == np.round(0.1 * per_class).astype(int).tolist()
    metrics = client.get_run(pretrained["run_id"]).data.metrics
    assert metrics["eval/finetune_top1_10pct"] == pytest.approx(tuned)
    # The student: every image of the pool (no label subset), 10 epochs as its teacher had.
    (student,) = [c for c in children if c.data.params["method.name"] == "distill"]
    assert student.info.status == "FINISHED" and student.data.params["data.label_fraction"] == "None"
    assert student.data.params["method.temperature"] == "1.0" and student.data.params["train.epochs"] == "10"
    assert student.data.metrics["test_top1"] == pytest.approx(distilled)
    assert metrics["eval/distill_top1_10pct"] == pytest.approx(distilled)
    steps = {m.step for m in client.get_metric_history(student.info.run_id, "loss_step")}
    assert max(steps) == 10 * (1000 // int(student.data.params["train.batch_size"]))  # 1,000 images an epoch


def test_label_shares_on_the_command_line():
    args = build_parser().parse_args(["evaluate", "r", "--protocol", "finetune", "--labels", "1%", "--labels", "10"])
    assert args.labels == [0.01, 0.1] and args.protocol == ["finetune"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", "r", "--labels", "150%"])
