"""Every registered method, for free: finite loss, gradient on every trainable parameter,
an embedding for the collapse monitors, and a loss that falls over a few CPU steps."""

import math

import pytest
import torch
import torch.nn.functional as F
from steps import fit_targets, structured_images, take_step

from ssl_ray.config import ConfigError, config_from_dict, method_fields
from ssl_ray.data import fashion_mnist
from ssl_ray.methods import METHODS, register_method
from ssl_ray.methods.base import TrainingClock
from ssl_ray.monitors.collapse import effective_rank, normalized_std
from ssl_ray.nn.schedules import cosine_momentum
from ssl_ray.sections import ModelConfig
from ssl_ray.train.build import build_method
from ssl_ray.train.checkpoint import load_state, save_state
from ssl_ray.train.optim import build_optimizer, param_groups
from ssl_ray.views.recipe import Batch

# Small sizes for every method that has the field; the rest ignore them.
SMALL = {
    "projection_hidden_dim": 64,
    "projection_dim": 32,
    "predictor_hidden_dim": 32,
    "queue_size": 64,
    "num_classes": 4,
    "num_prototypes": 64,
    "out_dim": 64,
    "bottleneck_dim": 16,
    "tile_dim": 16,
    "hidden_dim": 32,
    "num_samples": 64,  # batch_for's rows are samples 0..31
    "negatives": 64,
    "num_clusters": 4,
}


# The views each kind of method takes: multi-crop with two global and two local crops, to
# exercise both; the pretext tasks' one crop at 48 px, for tiles a small encoder can read.
AUGMENT_FOR = {
    "two": {},
    "multi": {"local_crops": 2, "local_image_size": 12},
    "one": {"global_crops": 1, "image_size": 48},
}


def channels_for(name: str) -> int:
    """Colour images for a method whose encoder reads colour (CMC's L/ab split), else gray."""
    return 3 if METHODS[name].colour_split != "none" else 1


SMALL_RESNET = {"width": 8, "blocks": [1, 1, 1, 1]}
# For the methods that refuse a ResNet (MAE, BEiT): a 2-block ViT on 8 px patches.
SMALL_VIT = {"backbone": "vit_tiny", "vit_depth": 2, "patch_size": 8, "vit_pool": "mean"}


def model_for(name: str) -> dict:
    params = METHODS[name].Params(name=name)
    return SMALL_VIT if METHODS[name].model_refusal(params, ModelConfig(**SMALL_RESNET)) else SMALL_RESNET


def small_config(name, tmp_path, **method):
    fields = method_fields(name)
    return config_from_dict(
        {
            "method": {"name": name, **{k: v for k, v in SMALL.items() if k in fields}, **method},
            "data": {"path": str(tmp_path), "channels": channels_for(name)},
            "model": model_for(name),
            "augment": AUGMENT_FOR[METHODS[name].crops.kind],
        }
    )


def batch_for(method, seed=0, n=32) -> Batch:
    """A batch as the loop gives ``method``: its own recipe's views and parts, made from
    structured random images, with labels (4 classes)."""
    channels = channels_for(method.name)
    images = structured_images(n, seed, channels)
    return method.recipe.batch_of(images, channels=channels, seed=seed, labels=torch.arange(n) % 4)


def test_a_method_is_built_from_its_params_without_a_pipeline():
    """No pipeline config, no data path: the typed params, an encoder, its width, a recipe."""
    from ssl_ray.nn.backbones import build_backbone
    from ssl_ray.sections import AugmentConfig

    cls = METHODS["simclr"]
    params = cls.Params(name="simclr", projection_hidden_dim=16, projection_dim=8)
    encoder, width = build_backbone("resnet18", 1, width=8, blocks=(1, 1, 1, 1))
    method = cls(params, encoder, width, cls.recipe(params, AugmentConfig()))
    out = method(batch_for(method))
    assert out["embedding"].shape == (32, 8) and torch.isfinite(out["loss"])
    assert method.params.temperature == 0.1 and not hasattr(method, "config")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_contract(name, tmp_path):
    torch.manual_seed(0)
    method = build_method(small_config(name, tmp_path))
    fit_targets(method)
    out = method(batch_for(method))
    assert torch.isfinite(out["loss"])
    assert out["embedding"].ndim == 2 and out["embedding"].shape[0] == 32
    out["loss"].backward()
    missing = [
        n for n, p in method.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())
    ]
    assert not missing, f"no gradient reaches {missing}"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_methods_state_comes_back_from_a_checkpoint(name, tmp_path):
    """What a resume does, for every method: the worker loop's state file, written after a few
    steps and loaded into a method built afresh from another seed, gives back every tensor of
    its state (weights, target networks, queues, PIRL's bank and its normaliser, DINO's centre,
    DeepCluster's pseudo-labels and the epoch they were fitted at), and with them the same
    loss on the same batch."""
    torch.manual_seed(0)
    config = small_config(name, tmp_path)
    method = build_method(config)
    fit_targets(method)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.05)
    for step in range(3):
        take_step(method, optimizer, step, 10, batch_for(method, seed=step))
    (tmp_path / "ckpt").mkdir()
    save_state(tmp_path / "ckpt", {"model": method.state_dict(), "epoch": 1, "step": 3})
    torch.manual_seed(1)
    resumed = build_method(config)
    resumed.load_state_dict(load_state(tmp_path / "ckpt")["model"])
    saved, loaded = method.state_dict(), resumed.state_dict()
    assert sorted(saved) == sorted(loaded)
    changed = [key for key in saved if not torch.equal(saved[key], loaded[key])]
    assert not changed, f"not restored: {changed}"
    batch = batch_for(method, seed=9)
    method.eval(), resumed.eval()
    losses = []
    for model in (method, resumed):
        model.clock = TrainingClock(3, 10, 1)  # set by the loop at every step, not state
        torch.manual_seed(2)  # the same draws where a forward samples (PIRL's negatives)
        losses.append(model(batch)["loss"])
    torch.testing.assert_close(losses[0], losses[1])


# DINO's loss is a cross-entropy against a moving teacher whose centre, in 16 steps from a
# random init, first lets it fall and then pushes it back up towards log K as the teacher's
# output spreads out (measured: 3.0 -> 1.3 -> 4.0). What the student's gradient does is
# match the teacher: with the teacher and its centre held, that loss must fall. The teacher's
# EMA and centre are tested against their formulas, and the whole of DINO in its Ray Train run.
# PIRL's likewise: its memory bank fills with the network's own features in the first steps,
# which moves its NCE targets and the negatives (the loss rises 8 -> 120 in 16 steps here, the
# normaliser Z being estimated from the random bank); held, the loss must fall.
FIXED_TARGETS = {"dino": {"ema_momentum": 1.0, "center_momentum": 1.0}, "pirl": {"bank_momentum": 1.0}}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_loss_falls_over_a_few_steps(name, tmp_path):
    torch.manual_seed(0)
    method = build_method(small_config(name, tmp_path, **FIXED_TARGETS.get(name, {})))
    fit_targets(method)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    batches = [batch_for(method, seed=i) for i in range(4)]
    losses = []
    for step in range(16):
        # Two steps per "epoch": anything frozen in the first epoch trains from step 2 on.
        out = take_step(method, optimizer, step, 16, batches[step % 4], steps_per_epoch=2)
        losses.append(out["loss"].item())
    # From step 2 on, MoCo's queue (64 keys) holds real keys instead of its random start,
    # which makes the task harder; compare from there.
    assert sum(losses[-3:]) / 3 < sum(losses[2:5]) / 3, losses


def test_registry_rejects_duplicates_and_lists_known(tmp_path):
    with pytest.raises(ValueError, match="already registered"):
        register_method("simclr")(type("Other", (), {}))
    assert "simclr" in METHODS


@pytest.mark.parametrize("name", sorted(METHODS))
def test_declared_targets_get_no_gradient_and_follow_their_schedule(name, tmp_path):
    """Any method that declares momentum targets, for free: each ``target_<name>`` starts as
    a copy of its online module, gets no gradient, and after the shared step's update is
    ``m * target + (1 - m) * online`` with m its declared schedule's value at that step."""
    torch.manual_seed(0)
    method = build_method(small_config(name, tmp_path))
    declared = method.targets
    copies = {n.removeprefix("target_") for n, _ in method.named_children() if n.startswith("target_")}
    assert copies == set(declared.online if declared else ()), "every target copy is declared, and only those"
    if declared is None:
        return
    targets = [p for n in declared.online for p in getattr(method, f"target_{n}").parameters()]
    online = [p for n in declared.online for p in getattr(method, n).parameters()]
    for t, o in zip(targets, online, strict=True):
        torch.testing.assert_close(t, o)  # the target starts as a copy
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    method(batch_for(method))["loss"].backward()
    assert all(t.grad is None and not t.requires_grad for t in targets)
    optimizer.step()
    before = [t.clone() for t in targets]
    method.clock = TrainingClock(step=3, total_steps=10)
    method.update_targets()
    m = declared.start if declared.schedule == "constant" else cosine_momentum(3, 10, declared.start)
    assert m == declared.momentum_at(3, 10)
    for old, new, o in zip(before, targets, online):
        torch.testing.assert_close(new, m * old + (1 - m) * o)


def test_targets_follow_their_papers_schedules(tmp_path):
    schedules = {name: build_method(small_config(name, tmp_path)).targets for name in METHODS}
    declared = {name: (t.schedule, set(t.online)) for name, t in schedules.items() if t is not None}
    papers = {
        "byol": ("cosine", {"backbone", "projector"}),  # BYOL Sec. 3.2: 0.996 -> 1 along a cosine
        "moco_v3": ("cosine", {"backbone", "projector"}),  # MoCo v3: 0.99 -> 1 along a cosine
        "moco_v1": ("constant", {"backbone", "projector"}),  # MoCo v1/v2 Eq. 2: constant
        "moco_v2": ("constant", {"backbone", "projector"}),
        "dino": ("cosine", {"backbone", "head"}),  # DINO Sec. 3.1: 0.996 -> 1 along a cosine
        "pixpro": ("cosine", {"backbone", "projector"}),  # PixPro Sec. 4.1: 0.99 -> 1 along a cosine
        "densecl": ("constant", {"backbone", "projector", "dense_projector"}),  # MoCo v2's, both heads
    }
    assert {name: declared.get(name) for name in papers} == papers
    assert not {"simclr", "simsiam", "swav", "barlow_twins", "vicreg"} & set(declared)


def test_methods_take_their_papers_defaults(tmp_path):
    def method_config(name, **fields):
        return config_from_dict({"method": {"name": name, **fields}, "data": {"path": str(tmp_path)}}).method

    assert (method_config("moco_v1").temperature, method_config("moco_v1").ema_momentum) == (0.07, 0.999)
    assert method_config("moco_v2").temperature == 0.2 and method_config("moco_v2").queue_size == 65536
    assert (method_config("moco_v3").temperature, method_config("moco_v3").ema_momentum) == (1.0, 0.99)
    assert method_config("byol").ema_momentum == 0.996 and method_config("byol").projection_dim == 256
    assert method_config("simsiam").predictor_hidden_dim == 512
    densecl = method_config("densecl")
    assert (densecl.dense_weight, densecl.temperature, densecl.queue_size, densecl.ema_momentum) == (
        0.5,
        0.2,
        65536,
        0.999,
    )
    assert method_config("moco_v1", temperature=0.5).temperature == 0.5  # what the user sets wins


@pytest.mark.parametrize("name", ["moco_v1", "moco_v2"])
def test_moco_queue_takes_this_steps_keys_after_the_step(name, tmp_path):
    torch.manual_seed(0)
    method = build_method(small_config(name, tmp_path))
    batch = batch_for(method)
    views = batch.views
    start = method.queue.keys.clone()
    out = method(batch)
    # Eq. 1's negatives this step are the queue as it was: the batch's keys are not yet in it.
    torch.testing.assert_close(method.queue.keys, start)
    with torch.no_grad():
        keys = method.target_projector(method.target_backbone(views[1]))
    out["loss"].backward()
    method.after_step(out)
    assert int(method.queue.pointer) == 32
    torch.testing.assert_close(method.queue.keys[:32], keys)
    torch.testing.assert_close(method.queue.keys[32:], start[32:])


def test_moco_heads_v1_linear_v2_mlp(tmp_path):
    v1 = build_method(small_config("moco_v1", tmp_path))
    v2 = build_method(small_config("moco_v2", tmp_path))
    assert [type(m).__name__ for m in v1.projector] == ["Linear"]
    assert [type(m).__name__ for m in v2.projector] == ["Linear", "ReLU", "Linear"]


def test_moco_v3_loss_is_the_symmetrised_scaled_infonce(tmp_path):
    torch.manual_seed(0)
    method = build_method(small_config("moco_v3", tmp_path, temperature=0.5))
    batch = batch_for(method)
    views = batch.views
    loss = method(batch)["loss"]
    with torch.no_grad():
        q1, q2 = (F.normalize(method.predictor(method.projector(method.backbone(v))), dim=1) for v in views)
        k1, k2 = (F.normalize(method.target_projector(method.target_backbone(v)), dim=1) for v in views)
        labels = torch.arange(32)
        expected = 2 * 0.5 * (F.cross_entropy(q1 @ k2.T / 0.5, labels) + F.cross_entropy(q2 @ k1.T / 0.5, labels))
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)


def simsiam_collapse_monitors(tmp_path, stop_gradient: bool, steps: int = 200):
    """Train SimSiam on real Fashion-MNIST images; the monitors over the last 20 steps."""
    torch.manual_seed(0)
    config = config_from_dict(
        {
            "method": {
                "name": "simsiam",
                "projection_hidden_dim": 128,
                "projection_dim": 128,
                "predictor_hidden_dim": 32,
                "stop_gradient": stop_gradient,
            },
            "data": {"path": str(tmp_path)},
            "model": {"width": 8, "blocks": [1, 1, 1, 1], "stem_stride": 2},
        }
    )
    method = build_method(config)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    images = fashion_mnist.load_split(config.data.path, "train").images[: steps * 64]
    stds, ranks = [], []
    for step in range(steps):
        batch = method.recipe.batch_of(images[step * 64 : (step + 1) * 64], channels=1)
        out = take_step(method, optimizer, step, steps, batch)
        if step >= steps - 20:
            stds.append(normalized_std(out["embedding"]))
            ranks.append(effective_rank(out["embedding"]))
    return sum(stds) / len(stds), sum(ranks) / len(ranks)


def test_collapse_monitors_catch_simsiam_without_stop_gradient(fashion_mnist_dir):
    """SimSiam Sec. 4.1 / Fig. 2 on a small run: the same model, data and optimiser, with and
    without the stop-gradient. The projector ends in BN, which keeps every channel's batch
    variance at 1, so the collapse shows as the embeddings folding onto a line: the std falls
    from about 1/sqrt(D) and the effective rank falls towards 1."""
    healthy_std, healthy_rank = simsiam_collapse_monitors(fashion_mnist_dir, stop_gradient=True)
    collapsed_std, collapsed_rank = simsiam_collapse_monitors(fashion_mnist_dir, stop_gradient=False)
    assert healthy_std > 0.8 / math.sqrt(128), healthy_std
    assert collapsed_std < 0.6 * healthy_std, (collapsed_std, healthy_std)
    assert healthy_rank > 8, healthy_rank
    assert collapsed_rank < 4 and collapsed_rank < healthy_rank / 3, (collapsed_rank, healthy_rank)


def test_stop_gradient_switch_belongs_to_simsiam_only(tmp_path):
    with pytest.raises(ConfigError, match="method.stop_gradient"):
        config_from_dict({"method": {"name": "byol", "stop_gradient": False}, "data": {"path": str(tmp_path)}})


def test_simsiam_stop_gradient_and_fixed_predictor_lr(tmp_path):
    torch.manual_seed(0)
    method = build_method(small_config("simsiam", tmp_path))
    views = batch_for(method).views
    (z1, p1), (z2, _) = method.embed(views[0]), method.embed(views[1])
    z1.retain_grad()
    z2.retain_grad()
    method.criterion(p1, z2).backward()
    # Through the stop-gradient branch (z2 as the target) nothing flows; through p1 it does.
    assert z2.grad is None or z2.grad.abs().sum() == 0
    assert z1.grad.abs().sum() > 0
    groups = param_groups(method, 1e-4, method.fixed_lr_modules)
    fixed = {id(p) for g in groups if g["fixed_lr"] for p in g["params"]}
    assert fixed == {id(p) for p in method.predictor.parameters()}


@pytest.mark.parametrize("name, frozen", [("swav", "prototypes"), ("dino", "head.last_layer")])
def test_frozen_in_the_first_epoch_then_trained(name, frozen, tmp_path):
    """SwAV's prototypes and DINO's last layer get no update (not even weight decay) while the
    clock is in the first epoch, and train after it; in the loop's optimiser they have groups of
    their own (a fused optimiser needs a group's parameters to start together)."""
    torch.manual_seed(0)
    config = small_config(name, tmp_path)
    method = build_method(config)
    assert method.frozen_in_first_epoch == (frozen,)
    optimizer = build_optimizer(config.optim, method, 0.1)
    late = {id(p) for p in method.get_submodule(frozen).parameters() if p.requires_grad}
    assert any({id(p) for p in group["params"]} == late for group in optimizer.param_groups)
    batch = batch_for(method)
    frozen_before = [p.detach().clone() for p in method.get_submodule(frozen).parameters()]
    rest_before = [p.detach().clone() for n, p in method.named_parameters() if n.startswith("backbone.")]
    for step in range(2):  # the first epoch: two steps
        take_step(method, optimizer, step, 4, batch, steps_per_epoch=2)
    after_first = list(method.get_submodule(frozen).parameters())
    if name == "swav":  # only re-normalised onto the unit sphere after each step
        torch.testing.assert_close(after_first[0], F.normalize(frozen_before[0], dim=1))
    else:
        for old, new in zip(frozen_before, after_first):
            torch.testing.assert_close(new, old)
    assert any(
        not torch.equal(old, new)
        for old, new in zip(rest_before, (p for n, p in method.named_parameters() if n.startswith("backbone.")))
    )
    take_step(method, optimizer, 2, 4, batch, steps_per_epoch=2)
    assert any(
        not torch.allclose(old, new) for old, new in zip(frozen_before, method.get_submodule(frozen).parameters())
    )


def test_dino_teacher_temperature_centre_and_weight_norm(tmp_path):
    """The teacher temperature follows its warm-up as a function of the clock's step, the centre
    moves by its EMA of the teacher's outputs after each step and is checkpointed, and the last
    layer's weight norm stays 1."""
    from ssl_ray.nn.schedules import linear_warmup_then_constant

    torch.manual_seed(0)
    config = small_config("dino", tmp_path, teacher_temperature_warmup_epochs=2.0)
    method = build_method(config)
    m = config.method
    for step, expected in [(0, 0.04), (2, 0.055), (4, 0.07), (9, 0.07)]:
        method.clock = TrainingClock(step, 10, steps_per_epoch=2)
        assert method.teacher_temperature() == pytest.approx(expected)
        assert expected == pytest.approx(
            linear_warmup_then_constant(step, 4, m.teacher_temperature, m.teacher_temperature_final)
        )
    batch = batch_for(method)
    optimizer = build_optimizer(config.optim, method, 0.05)
    with torch.no_grad():  # both global crops in one batch, as the method runs them
        teacher = method.target_head(method.target_backbone(torch.cat(batch.views[:2])))
    take_step(method, optimizer, 0, 10, batch, steps_per_epoch=2)
    expected_centre = (1 - m.center_momentum) * teacher.mean(dim=0)  # from a zero centre
    torch.testing.assert_close(method.center, expected_centre, rtol=1e-4, atol=1e-6)
    assert "center" in method.state_dict()
    norms = method.head.last_layer.parametrizations.weight.original0
    assert not norms.requires_grad and torch.all(norms == 1.0)


def test_swav_spreads_codes_over_the_queue_once_it_is_full(tmp_path):
    torch.manual_seed(0)
    config = small_config("swav", tmp_path, queue_size=64)
    method = build_method(config)
    stored, batch = (batch_for(method, seed=s) for s in (1, 2))
    optimizer = build_optimizer(config.optim, method, 0.0)  # lr 0: the weights stay put
    for step in range(2):  # 32 images a step: full after two
        take_step(method, optimizer, step, 10, stored)
    assert int(method.queued) == 64
    queue = method.queues[0].negatives()
    torch.testing.assert_close(queue[:32], queue[32:])  # the same batch twice
    with_queue = method(batch)["loss"]
    method.queued.zero_()  # as if not yet full: the batch alone
    without = method(batch)["loss"]
    assert not torch.isclose(with_queue, without)


NEW_FAMILY = ["barlow_twins", "vicreg", "swav", "dino", "dcl", "supcon"]


def short_run_monitors(name: str, data_dir, steps: int = 60, batch: int = 64) -> tuple[float, float, int]:
    """Each method from its own pipeline file (a narrower encoder), on real Fashion-MNIST
    images: the collapse monitors over the last 10 steps, and the embedding width D."""
    from ssl_ray.config import load_config

    torch.manual_seed(0)
    config = load_config(
        f"pipelines/{name}_fashion_mnist.yaml", [f"data.path={data_dir}", "model.width=16", "train.precision=fp32"]
    )
    method = build_method(config)
    optimizer = build_optimizer(config.optim, method, config.optim.base_lr * batch / 256)
    split = fashion_mnist.load_split(config.data.path, "train")
    stds, ranks = [], []
    for step in range(steps):
        rows = slice(step * batch, (step + 1) * batch)
        labels = torch.from_numpy(split.labels[rows]).long()
        images = method.recipe.batch_of(split.images[rows], channels=1, labels=labels)
        out = take_step(method, optimizer, step, steps, images, steps_per_epoch=steps // 4)
        if step >= steps - 10:
            stds.append(normalized_std(out["embedding"]))
            ranks.append(effective_rank(out["embedding"]))
    return sum(stds) / len(stds), sum(ranks) / len(ranks), out["embedding"].shape[1]


@pytest.mark.parametrize("name", NEW_FAMILY)
def test_collapse_monitors_stay_healthy_on_a_short_run(name, fashion_mnist_dir):
    """60 steps from each new method's own pipeline (measured: std 0.7-1.0 of 1/sqrt(D) for
    all but SwAV, whose normalised projections gather round its prototypes, 0.29; effective
    rank 11-57). A collapsed encoder gives a std near 0 and a rank near 1 (the SimSiam
    ablation above)."""
    std, rank, dim = short_run_monitors(name, fashion_mnist_dir)
    assert std > 0.2 / math.sqrt(dim), (std, dim)
    assert rank > 8, rank


def test_supervised_classifier_does_not_depend_on_the_feature_scale(tmp_path):
    """Fine-tuning must not punish an encoder for the scale of its features (arbitrary under
    Barlow Twins' batch-normalised loss): the same encoder with its features x50 gives the
    same loss and the same gradients on the classifier."""
    config = small_config("supervised", tmp_path)
    batch = None
    losses, grads = [], []
    for scale in (1.0, 50.0):
        torch.manual_seed(0)
        method = build_method(config)
        batch = batch or batch_for(method)
        if scale != 1.0:
            method.backbone = torch.nn.Sequential(method.backbone, ScaledBy(scale))
        loss = method(batch)["loss"]
        loss.backward()
        losses.append(loss.item())
        grads.append(method.classifier.weight.grad.clone())
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-5)


class ScaledBy(torch.nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor
