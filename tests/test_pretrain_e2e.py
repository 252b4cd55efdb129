"""End to end through the real stack: the ``ssl-ray`` CLI, joined to a local Ray cluster, trains
SimCLR and every other method with 2 CPU workers (DDP over gloo) on Fashion-MNIST, checkpoints,
resumes, and tracks everything in a real MLflow server."""

from __future__ import annotations

import math
import re
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
import torch
from cli import SMALL_RUN, joined_to_the_shared_head, pipeline, run_cli
from imagefiles import OPENCLIPART, openclipart_folders
from mlflow.tracking import MlflowClient
from PIL import Image

from ssl_ray.config import load_config
from ssl_ray.data.prepare import PrepareOptions, prepare
from ssl_ray.methods import METHODS
from ssl_ray.nn.backbones import build_backbone
from ssl_ray.train.checkpoint import load_state
from ssl_ray.train.trainer import PretrainResult, run_pretraining

# Every other method: its own pipeline, 2 workers, 2,048 images, per-step metrics.
METHOD_RUN = [
    *SMALL_RUN,
    "data.train_subset=2048",
    "train.log_every_steps=1",
    "eval.knn_bank_size=2000",
    "eval.knn_query_size=1000",
    "eval.knn_raw_pixels=false",
    "tracking.experiment=e2e",
]


@pytest.fixture(scope="module")
def local_ray():
    """The suite's Ray head, joined in-process: the methods' runs below are driven by the
    training driver itself (``run_pretraining``), as the command line drives it, without a
    process start and the command line's end-of-run registration each (SimCLR's run covers
    both, through the CLI)."""
    with joined_to_the_shared_head():
        yield


def pretrain(tmp_path: Path, tracking_uri: str, method: str, *extra: str, resume: bool = False) -> PretrainResult:
    overrides = [
        *METHOD_RUN,
        f"train.storage_path={tmp_path / 'runs'}",
        f"tracking.tracking_uri={tracking_uri}",
        *extra,
    ]
    return run_pretraining(load_config(pipeline(f"{method}_fashion_mnist"), overrides), resume=resume)


def test_pretrain_checkpoint_and_mlflow(simclr_pretrained, mlflow_server):
    """The suite's SimCLR run (conftest.py): what the CLI printed, the checkpoint in the bucket,
    and everything MLflow holds of it."""
    first, tmp = simclr_pretrained["done"], simclr_pretrained["tmp"]
    run_id = re.search(r"MLflow run id:\s+(\w+)", first.stdout).group(1)
    assert f"open {mlflow_server}/#/experiments/" in first.stdout and f"/runs/{run_id}" in first.stdout
    for row in ("raw pixels", "random-init encoder", "trained encoder"):
        assert re.search(rf"^  {row}\s+\d+\.\d%", first.stdout, re.M), first.stdout
    bucket = simclr_pretrained["bucket"]
    ray_run = re.search(r"Ray Train run:\s+(e2e-\d{8}-\d{6})\s", first.stdout).group(1)
    assert re.search(rf"checkpoint: s3://{bucket}/runs/{ray_run}/checkpoint_", first.stdout), first.stdout
    s3 = boto3.client("s3", endpoint_url=simclr_pretrained["s3"], region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"runs/{ray_run}/")["Contents"]]
    assert any(re.fullmatch(rf"runs/{ray_run}/checkpoint_[^/]+/state\.pt", k) for k in keys), keys

    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.num_workers"] == "2"
    assert run.data.params["method.temperature"] == "0.2"
    assert run.data.params["data.train_subset"] == "2048"
    assert run.data.params["train.memory_format"] == "channels_last" and run.data.params["augment.on"] == "device"
    steps = sorted(client.get_metric_history(run_id, "loss_step"), key=lambda m: m.step)
    assert len(steps) == 2048 // 128
    losses = [m.value for m in steps]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, losses
    for key in ("loss", "knn_top1", "lr", "images_per_s", "collapse_std", "collapse_rank"):
        assert [m.step for m in client.get_metric_history(run_id, key) if m.step > 0] == [1], key
    assert 0.1 < run.data.metrics["knn_top1"] <= 1.0
    # A healthy SimCLR embedding (D = 128): per-channel std of unit vectors near 1/sqrt(128).
    assert 0.3 / math.sqrt(128) < run.data.metrics["collapse_std"] <= 1.0
    assert run.data.metrics["collapse_rank"] > 2.0
    assert 0.1 < run.data.metrics["knn_top1_raw_pixels"] <= 1.0
    assert run.data.metrics["knn_top1_init"] == client.get_metric_history(run_id, "knn_top1")[0].value
    assert "encoder/encoder.pt" in {a.path for a in client.list_artifacts(run_id, "encoder")}
    assert "plots/curves.png" in {a.path for a in client.list_artifacts(run_id, "plots")}
    assert "config.yaml" in {a.path for a in client.list_artifacts(run_id)}
    encoder_file = client.download_artifacts(run_id, "encoder/encoder.pt", str(tmp))
    weights = torch.load(encoder_file, weights_only=True)
    encoder, _ = build_backbone("resnet18", 1, width=8, blocks=(1, 1, 1, 1))
    encoder.load_state_dict(weights)  # the artifact is exactly the backbone, loadable as is
    # --resume into the same MLflow run: DeepCluster's and PIRL's runs below, and SimCLR's from
    # the bucket (test_object_storage.py).


# The runs that also resume: their momentum targets and buffers must come back.
RESUMED = ("moco_v2", "dino", "pirl", "deepcluster", "mae", "beit", "cpc_v2", "pixpro", "densecl")


def _slow_if_covered(method: str):
    """In the default run: DINO's epoch (multi-crop views through Ray Data, an EMA teacher,
    the centre, the first-epoch freeze and the teacher-temperature clock, on 2 workers), PIRL's
    (a one-view recipe whose batch parts, shuffled tiles and each row's sample index, are made
    and coloured in Ray Data and reach the method through the loop; RotNet's, Jigsaw's and
    relative location's parts take the same path) and DeepCluster (targets fitted between
    epochs, class-uniform draws in Ray Data) through a resume that restores its pseudo-labels
    with the model state every method's targets travel in (each method's state, PIRL's bank
    included, comes back from a checkpoint in test_methods). Outside it (``pytest -m slow``),
    to keep the suite in its time: DINO's and PIRL's resumes, and every other method, each
    unit-tested on its own (test_methods: loss falls, gradients reach the online network only,
    EMA targets, queues, frozen layers, collapse monitors on a short run, the state restored;
    the losses against hand computations and on 2 gloo workers), and whose path through Ray
    Train is SimCLR's or DINO's (the loop does not branch on which method runs). MoCo v2's
    queue and shuffle-BN are unit-tested on 2 gloo workers (test_queue), its checkpointed
    queue too."""
    params = []
    if method in ("dino", "pirl", "deepcluster"):
        params.append(pytest.param(method, method == "deepcluster", id=method))
    if method in RESUMED and method != "deepcluster":
        params.append(pytest.param(method, True, id=f"{method}-resumed", marks=pytest.mark.slow))
    if not params:
        params.append(pytest.param(method, False, id=method, marks=pytest.mark.slow))
    return params


# Methods whose encoder reads colour (CMC's L/ab split) are refused on Fashion-MNIST: they train
# on OpenClipart below.
COLOUR = sorted(name for name, method in METHODS.items() if method.colour_split != "none")


# SimCLR is covered above in full (through the command line), and the supervised and distill
# methods by the evaluation's fine-tuning and distillation runs (tests/test_evaluate.py).
@pytest.mark.parametrize(
    "method, resumed",
    [p for m in sorted(set(METHODS) - {"simclr", "supervised", "distill", *COLOUR}) for p in _slow_if_covered(m)],
)
def test_every_method_trains_through_ray_train(
    tmp_path, mlflow_server, fashion_mnist_dir, local_ray, capsys, method, resumed
):
    """Every other method, from its own pipeline file: one short 2-worker DDP epoch with a
    falling loss and its collapse monitors logged. DINO, MoCo v2, PIRL and DeepCluster also
    resume, and their momentum targets and buffers (DINO's centre, MoCo's queue, PIRL's bank,
    DeepCluster's pseudo-labels) must come back from the checkpoint (``_slow_if_covered``
    says which run by default)."""
    # A queue of 384 keys is full after 3 of the 16 steps. At this width MoCo v2's loss at its
    # own temperature (0.2) moves too little in 16 steps to tell falling from noise (5.45 ->
    # 5.44 with a 256-key queue); at 0.1 it falls clearly. 0.2 is measured in benchmarks/.
    special = {
        "moco_v1": ["method.queue_size=384"],
        "moco_v2": ["method.queue_size=384", "method.temperature=0.1"],
        "densecl": ["method.queue_size=384", "method.temperature=0.1"],
        # Without its queue: in one epoch a filling queue moves the codes (the loss steps up
        # when it starts), and the prototypes stay frozen (first epoch); the queue is unit-tested.
        "swav": ["method.queue_size=0"],
        # The teacher, its centre and its temperature held for the one short epoch (a warming
        # teacher temperature raises the loss by itself): what the student's gradient
        # does through Ray Train is then a loss that falls (tests/test_methods.py: FIXED_TARGETS).
        # A slow bank: epoch 2 moves each row only a little from where epoch 1 left it, which
        # a bank lost on resume (random rows again) could not match.
        "pirl": ["method.bank_momentum=0.9", "method.negatives=512"],
        # Clustered before epoch 1, next due before epoch 3: the resumed epoch 2 must train on
        # the checkpoint's clusters, not fit new ones.
        "deepcluster": ["method.recluster_every=2"],
        "dino": [
            "method.ema_momentum=1.0",
            "method.center_momentum=1.0",
            "method.teacher_temperature_warmup_epochs=0",
            "method.out_dim=1024",
        ],
    }
    common = [*special.get(method, []), f"train.run_name=e2e-{method}"]
    done = pretrain(tmp_path, mlflow_server, method, "train.epochs=1", *common)
    console = capsys.readouterr().out
    run_id = done.mlflow_run_id
    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["method.name"] == method
    losses = [m.value for m in sorted(client.get_metric_history(run_id, "loss_step"), key=lambda m: m.step)]
    assert len(losses) == 2048 // 128 and all(math.isfinite(v) for v in losses)
    # MoCo's loss rises while real keys replace the queue's random start; compare once full.
    # PIRL's bank fills over the whole first epoch, moving its targets (tests/test_methods.py
    # holds the bank to see the loss fall).
    start = 3 if method in ("moco_v1", "moco_v2", "densecl") else 2
    if method != "pirl":
        assert sum(losses[-4:]) / 4 < sum(losses[start : start + 4]) / 4, losses
    assert run.data.metrics["collapse_std"] > 0 and run.data.metrics["collapse_rank"] >= 1.0
    if method == "deepcluster":
        assert [m.step for m in client.get_metric_history(run_id, "nmi_labels")] == [1]
        assert 0.0 < run.data.metrics["nmi_labels"] < 1.0 and run.data.metrics["clusters_empty"] == 0
        assert "epoch 1: new targets for 2048 images, NMI with the labels" in console
    if not resumed:
        return

    second = pretrain(tmp_path, mlflow_server, method, "train.epochs=2", *common, resume=True)
    assert second.mlflow_run_id == run_id and second.epochs_done == 2
    assert len([p for p in (tmp_path / "runs").iterdir() if p.name.startswith(f"e2e-{method}-")]) == 1
    epochs = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert sorted(epochs) == [1, 2], "the resumed run trains epoch 2 only, into the same MLflow run"
    assert len(client.get_metric_history(run_id, "knn_top1_init")) == 1
    steps = sorted(m.step for m in client.get_metric_history(run_id, "loss_step"))
    assert steps == list(range(1, 2 * 16 + 1)), "step count continues from the checkpoint"
    # The resumed run's schedule ends with its own 2 epochs, not the checkpoint's run's 1: the
    # learning rate of epoch 2 is not held at the end of a finished schedule.
    lr = {m.step: m.value for m in client.get_metric_history(run_id, "lr_step")}
    assert lr[20] > lr[30] > 0, lr  # logged every 10 steps
    assert client.get_run(run_id).info.status == "FINISHED"
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith(f"e2e-{method}-")]
    state = load_state(max((p for p in run_dir.glob("checkpoint_*") if p.is_dir()), key=lambda p: p.name))
    assert state["step"] == 32
    if method in ("moco_v2", "dino", "densecl"):
        assert any(k.startswith("target_backbone.") for k in state["model"])
    if method in ("moco_v2", "densecl"):
        # 32 steps of 128 keys have entered a 384-slot queue: the write position is 4096 mod 384.
        # A queue lost on resume would have restarted at 0 and stand at 2048 mod 384 = 128.
        queues = ("queue", "dense_queue") if method == "densecl" else ("queue",)
        assert [int(state["model"][f"{q}.pointer"]) for q in queues] == [4096 % 384] * len(queues)
        return
    first = load_state(min((p for p in run_dir.glob("checkpoint_*") if p.is_dir()), key=lambda p: p.name))
    if method == "deepcluster":
        # The clusters of epoch 0 came back and were kept (a lost state would have been
        # re-clustered before epoch 2), and nothing new was logged for epoch 2.
        assert int(state["model"]["clustered_at_epoch"]) == 0
        assert torch.equal(state["model"]["assignments"], first["model"]["assignments"])
        assert (first["model"]["assignments"] >= 0).all()
        assert [m.step for m in client.get_metric_history(run_id, "nmi_labels")] == [1]
        return
    if method == "beit":
        # The tokenizer was fitted once, before epoch 1, logged to the run, and the resumed
        # epoch 2 predicted the same codebook's tokens (the checkpoint's, not a new fit).
        assert [m.step for m in client.get_metric_history(run_id, "tokenizer_codes_used")] == [1]
        assert [a.path for a in client.list_artifacts(run_id, "fitted")] == ["fitted/beit_before_epoch_1.pt"]
        logged = torch.load(client.download_artifacts(run_id, "fitted/beit_before_epoch_1.pt", str(tmp_path)))
        assert torch.equal(logged["codebook"], state["model"]["codebook"].cpu())
        assert torch.equal(first["model"]["codebook"], state["model"]["codebook"])
        assert run.data.metrics["tokenizer_codes_used"] > 100
        # A new run given this one's tokenizer (train.fitted_from) fits none of its own: it
        # trains on, and logs, the same codebook.
        capsys.readouterr()
        given = pretrain(
            tmp_path,
            mlflow_server,
            method,
            "train.epochs=1",
            "train.run_name=e2e-beit-given",
            f"train.fitted_from={run_id}",
        )
        assert f"epoch 1: new targets from {run_id} (train.fitted_from), " in capsys.readouterr().out
        assert given.mlflow_run_id != run_id
        assert client.get_metric_history(given.mlflow_run_id, "targets_fitted_images") == []
        adopted = client.download_artifacts(given.mlflow_run_id, "fitted/beit_before_epoch_1.pt", str(tmp_path))
        assert torch.equal(torch.load(adopted)["codebook"], logged["codebook"])
        given_run = client.get_run(given.mlflow_run_id)
        assert given_run.data.params["train.fitted_from"] == run_id
        assert (
            given_run.data.metrics["tokenizer_codes_used"]
            == client.get_metric_history(run_id, "tokenizer_codes_used")[0].value
        )
        return
    if method == "mae":
        # A ViT through Ray Train: epoch 2 trained on from epoch 1's weights (the mask token too).
        assert any(k.startswith("backbone.1.blocks.") for k in state["model"])
        assert not torch.equal(state["model"]["mask_token"], first["model"]["mask_token"])
        return
    if method == "pixpro":
        # The EMA target came back from epoch 1's checkpoint and followed the online network
        # through epoch 2 (a target rebuilt on resume would be the trained encoder's copy).
        moving = [k for k in state["model"] if k.startswith("target_backbone.") and k.endswith("weight")]
        assert moving and any(not torch.equal(state["model"][k], first["model"][k]) for k in moving)
        online = {k.removeprefix("target_"): v for k, v in state["model"].items() if k.startswith("target_backbone.")}
        assert any(not torch.equal(state["model"][k], v) for k, v in online.items() if k in state["model"])
        return
    if method == "pirl":
        # Epoch 2 visited every one of the 2,048 rows (each sample index reached the bank, from
        # both workers) and moved it by m = 0.9 from epoch 1's: cos(new, old) >= 0.9 - 0.1 for
        # every row. A bank rebuilt on resume would be random rows mixed 0.9 : 0.1 (cos ~ 0.1).
        before, after = first["model"]["bank.memory"], state["model"]["bank.memory"]
        assert before.shape == (2048, 128)
        agreement = (before * after).sum(dim=1)
        assert agreement.min() > 0.75 and agreement.max() < 1 - 1e-6, (agreement.min(), agreement.max())
        assert state["model"]["criterion.log_normaliser"] == first["model"]["criterion.log_normaliser"]  # Z held
        return
    # DINO: the centre is checkpointed (momentum 1.0 keeps it at its start here), and the
    # teacher (momentum 1.0: still the student's initial weights) came back from the checkpoint
    # rather than being rebuilt from the trained student; the student trained on.
    assert torch.count_nonzero(state["model"]["center"]) == 0
    statistics = ("running_mean", "running_var", "num_batches_tracked")  # BN buffers move in train mode
    for key, value in first["model"].items():
        if key.startswith("target_") and not key.endswith(statistics):
            torch.testing.assert_close(state["model"][key], value)
    assert any(
        not torch.equal(state["model"][k], first["model"][k]) for k in state["model"] if k.startswith("backbone.")
    )


def test_supcon_on_images_without_labels_is_refused_naming_the_data(tmp_path, fashion_mnist_dir):
    """SupCon needs labels: a folder of images with no class sub-folders stops the run before
    any worker starts, with the method and the data's location in the message."""
    from imagefiles import fashion_mnist_folder, write_local

    files = fashion_mnist_folder(fashion_mnist_dir, "train", per_class=20)
    flat = write_local(tmp_path / "unlabelled", {name.replace("/", "-"): raw for name, raw in files.items()})
    done = run_cli(
        "pretrain",
        pipeline("supcon_fashion_mnist"),
        *SMALL_RUN,
        "data.source=images",
        f"data.path={flat}",
        f"train.storage_path={tmp_path / 'runs'}",
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"method supcon trains on labels, and {flat} has none" in done.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.fixture(scope="module")
def openclipart_shards(tmp_path_factory, local_ray) -> Path:
    """Two of Debian's OpenClipart folders (plants 95, geography 135 drawings) as ``prepare``
    writes them, train and test, at 32 px."""
    if not OPENCLIPART.is_dir():
        pytest.skip("needs Debian's openclipart-png (scripts/setup.sh --openclipart)")
    root = tmp_path_factory.mktemp("openclipart")
    drawings = openclipart_folders(root / "png", {"plants": None, "geography": None})
    prepare(str(drawings), str(root / "shards"), PrepareOptions(source="openclipart", size=32))
    return root / "shards"


# CMC's 3-channel path through Ray Data and Ray Train is the images pipeline's (RGB, in
# test_images_pipeline), its encoder in the evaluation's actors is unit-tested (test_cmc); its
# run here, with its resume, is outside the default run's time. Colorization's one epoch is
# not: its colour count over the training images before epoch 1 and its picture after the
# last. Its resume is (a checkpointed buffer that keeps a fit from being done again: the
# registry-wide state round trip and DeepCluster's resume above).
COLOUR_RUNS = [
    pytest.param(
        m,
        resume,
        id=f"{m}-resumed" if resume else m,
        marks=[] if (m, resume) == ("colorization", False) else pytest.mark.slow,
    )
    for m in COLOUR
    for resume in ((False, True) if m == "colorization" else (True,))
]


@pytest.mark.parametrize("method, resume", COLOUR_RUNS)
def test_colour_methods_train_and_resume_on_openclipart(tmp_path, mlflow_server, openclipart_shards, method, resume):
    overrides = [
        *SMALL_RUN,
        "train.num_workers=1",
        "train.batch_size=64",
        f"data.path={openclipart_shards / 'train'}",
        f"data.val_path={openclipart_shards / 'test'}",
        "data.decode_size=32",
        "augment.image_size=24",
        "eval.knn_k=20",
        "eval.knn_every_epochs=1",
        "eval.knn_raw_pixels=false",
        "eval.linear_probe_at_end=false",
        f"train.storage_path={tmp_path / 'runs'}",
        f"tracking.tracking_uri={mlflow_server}",
        "tracking.experiment=e2e-colour",
        f"train.run_name=e2e-{method}",
    ]
    config = load_config(pipeline(f"{method}_openclipart"), [*overrides, "train.epochs=1"])
    first = run_pretraining(config)
    epochs = 1
    if resume:
        resumed = run_pretraining(
            load_config(pipeline(f"{method}_openclipart"), [*overrides, "train.epochs=2"]), resume=True
        )
        assert resumed.mlflow_run_id == first.mlflow_run_id and resumed.epochs_done == 2
        epochs = 2
    client = MlflowClient(mlflow_server)
    run = client.get_run(first.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.params["method.name"] == method
    assert sorted(m.step for m in client.get_metric_history(first.mlflow_run_id, "loss")) == list(range(1, epochs + 1))
    # Two categories: the kNN monitor (the colour encoder in the evaluation's actors) beats chance.
    assert 0.5 < run.data.metrics["knn_top1"] <= 1.0, run.data.metrics["knn_top1"]
    if method == "colorization":
        # The colours were counted once, before epoch 1, over every training drawing; a resume
        # trains on the checkpoint's weights rather than counting again.
        counted = client.get_metric_history(first.mlflow_run_id, "targets_fitted_images")
        drawings = sum(pq.ParquetFile(f).metadata.num_rows for f in (openclipart_shards / "train").glob("*.parquet"))
        assert [(m.step, m.value) for m in counted] == [(1, drawings)]
        assert run.data.metrics["colour_bins_used"] > 10
        assert run.data.metrics["rebalancing_weight_max"] > 1.0 > run.data.metrics["rebalancing_weight_min"]
        assert [a.path for a in client.list_artifacts(first.mlflow_run_id, "fitted")] == [
            "fitted/colorization_before_epoch_1.pt"
        ]
        # A picture after each command's last epoch.
        pictures = [a.path for a in client.list_artifacts(first.mlflow_run_id, "illustrations")]
        assert pictures == [f"illustrations/colorization_epoch_{e}.png" for e in range(1, epochs + 1)], pictures
        local = client.download_artifacts(first.mlflow_run_id, pictures[-1], str(tmp_path))
        with Image.open(local) as picture:  # 3 rows (gray, predicted, true) of 12 drawings, drawn 2x
            side = (picture.height // 2 - 2) // 3 - 2  # the held-out images' side
            assert picture.mode == "RGB" and picture.size == (2 * (2 + 12 * (side + 2)), 2 * (2 + 3 * (side + 2)))
            assert side in (24, 32), side
