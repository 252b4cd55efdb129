"""``ssl-ray evaluate``: the field's protocols on a trained encoder, beside the baselines, with
diagnostics, into MLflow.

Features of the labelled training and test sets are extracted once per encoder (Ray Data
batch inference, ``inference.py``) and every frozen-feature protocol reuses them: kNN at
k = 10, 20, 200 (the monitor's weighted vote) and the linear probe (``probe.py``). The same
code path measures the baselines: the random-init encoder (the pretraining's own seeded
start) and raw pixels.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
import torch

from ssl_ray.config import ConfigError
from ssl_ray.console import start_ray
from ssl_ray.data.errors import warn
from ssl_ray.data.sources import EvalData, build_eval_data
from ssl_ray.eval import dense, diagnostics
from ssl_ray.eval.distill import distill
from ssl_ray.eval.encoders import TrainedEncoder
from ssl_ray.eval.finetune import RunSizes, finetune, label_tag
from ssl_ray.eval.geometry import alignment, singular_spectrum, uniformity
from ssl_ray.eval.inference import EncoderSpec, embed
from ssl_ray.eval.probe import linear_probe
from ssl_ray.monitors.collapse import effective_rank
from ssl_ray.monitors.features import as_nchw
from ssl_ray.monitors.knn import k_for_bank, knn_top1
from ssl_ray.tracking.mlflow_run import RunTracker
from ssl_ray.tracking.pictures import save_image_rows
from ssl_ray.views.transforms import ViewMaker

KNN_KS = (10, 20, 200)
FROZEN_PROTOCOLS = ("knn", "linear")
# Test images the pictures and the geometry use (t-SNE and all-pairs uniformity grow as N^2).
DIAGNOSTIC_SAMPLE = 2000
PREFIX = "eval"


@dataclass(frozen=True)
class EvaluateOptions:
    protocols: tuple[str, ...] = FROZEN_PROTOCOLS
    label_fractions: tuple[float, ...] = (0.1,)  # for "finetune" (and "distill", from each)
    finetune_epochs: int | None = None  # None: 60 at 1%, 30 at 10%, the pretraining's at 100%
    baselines: bool = True
    diagnostics: bool = True
    # Class-stratified samples of the labelled training and test images, drawn with ``seed`` (None: all).
    train_size: int | None = None
    test_size: int | None = None
    seed: int = 0
    scenes: str | None = None  # for "segment": the folder or prefix of train/ and test/ scene shards
    # Other trained encoders measured beside this one on the same sets by the frozen and dense
    # protocols (not fine-tuned): the supervised-on-classification baseline of a dense table,
    # or the other methods' encoders, in one table and one picture.
    references: tuple[TrainedEncoder, ...] = ()

    def __post_init__(self) -> None:
        if "segment" in self.protocols and not self.scenes:
            raise ConfigError(
                "--protocol segment needs --scenes DIR (ssl-ray prepare --scenes writes DIR/train and DIR/test)"
            )
        if "distill" in self.protocols and "finetune" not in self.protocols:
            raise ConfigError("--protocol distill needs --protocol finetune too: the fine-tuned network is its teacher")


@dataclass
class EncoderResult:
    name: str  # "trained encoder", "random-init encoder", "raw pixels"
    scope: str  # its metrics' prefix in MLflow: "eval", "eval/random_init", "eval/raw_pixels"
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Evaluation:
    results: list[EncoderResult]
    run_id: str
    tracking_uri: str
    diagnostics: dict[str, float]
    seconds: float

    def table(self) -> str:
        columns = [f"knn_top1_k{k}" for k in KNN_KS] + [
            "linear_top1",
            "linear_top5",
            "segment_miou",
            "segment_pixel_acc",
        ]
        for kind in ("finetune_top1_", "distill_top1_"):
            columns += sorted({c for r in self.results for c in r.metrics if c.startswith(kind)})
        present = [c for c in columns if any(c in r.metrics for r in self.results)]
        headers = {
            c: c.replace("knn_top1_", "kNN ")
            .replace("linear_", "linear ")
            .replace("finetune_top1_", "tuned ")
            .replace("distill_top1_", "distilled ")
            .replace("segment_miou", "seg mIoU")
            .replace("segment_pixel_acc", "seg pix acc")
            for c in present
        }
        lines = [f"{'':22}" + "".join(f"{headers[c]:>14}" for c in present)]
        for r in self.results:
            cells = "".join(f"{100 * r.metrics[c]:>13.1f}%" if c in r.metrics else f"{'-':>14}" for c in present)
            lines.append(f"{r.name:22}{cells}")
        return "\n".join(lines)


def _frozen_protocols(
    result: EncoderResult,
    spec: EncoderSpec,
    data: EvalData,
    options: EvaluateOptions,
    config,
    use_gpu: bool,
    actors: int,
) -> np.ndarray:
    features = embed({"train": data.train, "test": data.test}, spec, use_gpu, actors)
    (train_x, train_y), (test_x, test_y) = features["train"], features["test"]
    if "knn" in options.protocols:
        bank, bank_labels = torch.from_numpy(train_x), torch.from_numpy(train_y)
        query, query_labels = torch.from_numpy(test_x), torch.from_numpy(test_y)
        for k in KNN_KS:
            fitted = k_for_bank(k, train_y)
            if fitted < k and spec.kind == "weights":  # said once, not once per baseline
                warn(
                    f"kNN k {k} is more than the bank's smallest class ({fitted} images): knn_top1_k{k} uses k={fitted}"
                )
            result.metrics[f"knn_top1_k{k}"] = knn_top1(
                query, query_labels, bank, bank_labels, data.num_classes, fitted, config.eval.knn_temperature
            )
    if "linear" in options.protocols:
        probe = linear_probe(train_x, train_y, test_x, test_y, seed=options.seed)
        result.metrics.update(
            linear_top1=probe.top1,
            linear_top5=probe.top5,
            linear_weight_decay=probe.weight_decay,
            linear_converged=float(probe.converged),
        )
    return test_x


def _diagnostics(
    encoder: TrainedEncoder, data: EvalData, test_features: np.ndarray, out: Path, seed: int
) -> dict[str, float]:
    """Geometry numbers and pictures from the trained encoder, on a sample of test images."""
    config = encoder.config
    sample = data.test.limit(DIAGNOSTIC_SAMPLE).take_batch(DIAGNOSTIC_SAMPLE, batch_format="numpy")
    images, labels = sample["image"], sample["label"]
    model = EncoderSpec.of("weights", config, encoder.state).build().eval()
    threads = torch.get_num_threads()  # ViewMaker pins its process to one thread (it runs per CPU in Ray Data)
    views = ViewMaker(config.augment, config.data.channels, seed=seed).views(images)
    torch.set_num_threads(threads)
    with torch.no_grad():
        features = torch.cat(
            [model(as_nchw(torch.from_numpy(images[i : i + 256]))) for i in range(0, len(images), 256)]
        )
        # Alignment between the two global crops (multi-crop recipes add smaller local ones).
        z1, z2 = (torch.cat([model(v[i : i + 256]) for i in range(0, len(v), 256)]) for v in views[:2])
    spectrum = singular_spectrum(torch.from_numpy(test_features))
    numbers = {
        "alignment": alignment(z1, z2),
        "uniformity": uniformity(features),
        "effective_rank": effective_rank(torch.from_numpy(test_features)),
    }
    diagnostics.plot_spectrum(out / "spectrum.png", spectrum, numbers["effective_rank"], "test embeddings")
    diagnostics.plot_embedding_map(out / "tsne.png", features.numpy(), labels, list(data.classes), seed)
    queries = torch.arange(8)
    neighbours = diagnostics.nearest(features, queries, k=8)
    diagnostics.plot_retrieval(out / "retrieval.png", images, labels, queries, neighbours)
    diagnostics.plot_views(out / "views.png", images[:8], [v[:8].numpy() for v in views])
    return numbers


def _segment_protocol(results, specs, config, options: EvaluateOptions, use_gpu: bool) -> torch.Tensor:
    """mIoU and pixel accuracy of a linear head on each encoder's frozen feature map (raw pixels
    have none); returns the picture's rows: test scenes, true masks, each encoder's masks."""
    root = options.scenes.rstrip("/")
    train = dense.load_scenes(f"{root}/train", config.storage, config.data.channels)
    test = dense.load_scenes(f"{root}/test", config.storage, config.data.channels)
    classes = max(len(train.classes), int(train.masks.max()) + 1, int(test.masks.max()) + 1)
    device = torch.device("cuda" if use_gpu else "cpu")
    predicted = {}
    for result, (_, _, spec) in zip(results, specs):
        if spec.kind == "pixels":
            continue
        found, masks = dense.segment(spec.build(), train, test, classes, options.seed, device)
        result.metrics.update(segment_miou=found.miou, segment_pixel_acc=found.pixel_accuracy)
        predicted[result.name] = masks
    return dense.picture_rows(test, predicted, classes)


def _reference_specs(references: tuple[TrainedEncoder, ...], config) -> list[tuple[str, str, EncoderSpec]]:
    """The reference encoders' rows, each built from its own run's model config and fed this
    run's images; metrics under ``eval/reference/<method>`` (``_2``, ... for a method twice)."""
    specs, seen = [], {}
    for reference in references:
        channels = reference.config.data.channels
        if channels != config.data.channels:
            raise ConfigError(
                f"--reference {reference.source}: its encoder reads {channels}-channel images, "
                f"and this run's data has {config.data.channels}"
            )
        method = reference.config.method.name
        seen[method] = seen.get(method, 0) + 1
        key = method if seen[method] == 1 else f"{method}_{seen[method]}"
        spec = EncoderSpec.of("weights", reference.config, reference.state)
        specs.append((f"ref: {key}", f"{PREFIX}/reference/{key}", spec))
    return specs


def _target_run(encoder: TrainedEncoder, tracking_uri: str) -> RunTracker:
    """The pretraining's own run when there is one; else a run of its own, tagged with the source."""
    if encoder.run_id is not None:
        return RunTracker(tracking_uri, encoder.run_id)
    tracker = RunTracker.start(
        tracking_uri,
        encoder.config,
        f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={"ssl_ray.evaluates": encoder.source},
    )
    return tracker


def evaluate(encoder: TrainedEncoder, options: EvaluateOptions, tracking_uri: str) -> Evaluation:
    started = time.perf_counter()
    references = _reference_specs(options.references, encoder.config)
    if not ray.is_initialized():
        start_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    config = encoder.config
    data = build_eval_data(config, options.train_size, options.test_size, options.seed)
    use_gpu = bool(ray.cluster_resources().get("GPU", 0))
    # GPU actors take no CPU; CPU actors leave one CPU for the tasks that read and decode
    # their input (all CPUs as actors would starve those tasks and hang the pass).
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = int(ray.cluster_resources()["GPU"]) if use_gpu else max(1, cpus - 1)
    specs = [("trained encoder", PREFIX, EncoderSpec.of("weights", config, encoder.state))]
    if options.baselines:
        specs.append(("random-init encoder", f"{PREFIX}/random_init", EncoderSpec.of("random", config)))
        if config.eval.knn_raw_pixels:
            specs.append(("raw pixels", f"{PREFIX}/raw_pixels", EncoderSpec.of("pixels", config)))
    specs += references
    results = [EncoderResult(name, scope) for name, scope, _ in specs]
    trained_test_features = None
    if any(p in FROZEN_PROTOCOLS for p in options.protocols):
        for result, (_, _, spec) in zip(results, specs):
            test_features = _frozen_protocols(result, spec, data, options, config, use_gpu, actors)
            if trained_test_features is None:
                trained_test_features = test_features
    elif options.diagnostics:
        trained_test_features, _ = embed({"test": data.test}, specs[0][2], use_gpu, actors)["test"]

    tracker = _target_run(encoder, tracking_uri)
    if "finetune" in options.protocols:
        starts = [encoder.state, None] if options.baselines else [encoder.state]  # None: the random init
        sizes = RunSizes(options.finetune_epochs, options.train_size, options.test_size, options.seed, data.train_count)
        for fraction in options.label_fractions:
            tag = label_tag(fraction)
            for result, start in zip(results, starts):
                tuned = finetune(config, start, fraction, tracker.run_id, sizes)
                result.metrics[f"finetune_top1_{tag}"] = tuned.test_top1
                if "distill" in options.protocols and start is not None:
                    result.metrics[f"distill_top1_{tag}"] = distill(
                        config, start, tuned, fraction, tracker.run_id, sizes
                    )
    segment_rows = None
    if "segment" in options.protocols:
        segment_rows = _segment_protocol(results, specs, config, options, use_gpu)
    results = [r for r in results if r.metrics]
    numbers: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as out:
        out = Path(out)
        if segment_rows is not None:
            tracker.log_artifact(save_image_rows(segment_rows, out / "segment_masks.png"), PREFIX)
        if options.diagnostics:
            numbers = _diagnostics(encoder, data, trained_test_features, out, options.seed)
            for picture in sorted(out.glob("*.png")):
                tracker.log_artifact(picture, f"{PREFIX}/diagnostics")
        evaluation = Evaluation(results, tracker.run_id, tracking_uri, numbers, time.perf_counter() - started)
        (out / "results.txt").write_text(evaluation.table() + "\n")
        tracker.log_artifact(out / "results.txt", PREFIX)
    metrics = {f"{PREFIX}/{key}": value for key, value in numbers.items()}
    for result in results:
        metrics.update({f"{result.scope}/{key}": value for key, value in result.metrics.items()})
    tracker.log_metrics(metrics, step=0)
    if encoder.run_id is None:
        tracker.end("FINISHED")  # its own run; a pretraining's run keeps its status
    return evaluation
