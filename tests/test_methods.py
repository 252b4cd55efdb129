"""Every registered method, for free: finite loss, gradient on every trainable parameter,
an embedding for the collapse monitors, and a loss that falls over a few CPU steps."""

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_ray.config import ConfigError, config_from_dict
from ssl_ray.data import fashion_mnist
from ssl_ray.data.views import ViewMaker
from ssl_ray.eval.collapse import effective_rank, normalized_std
from ssl_ray.methods import METHODS, build_method, register_method
from ssl_ray.nn.schedules import cosine_momentum
from ssl_ray.train.optim import param_groups


def small_config(name, tmp_path, **method):
    return config_from_dict(
        {
            "method": {
                "name": name,
                "projection_hidden_dim": 64,
                "projection_dim": 32,
                "queue_size": 64,
                "num_classes": 4,  # read by the label-trained methods only
                **method,
            },
            "data": {"path": str(tmp_path)},
            "model": {"width": 8, "blocks": [1, 1, 1, 1]},
        }
    )


def batch_of_views(seed=0, n=32):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=generator).numpy()
    images[:, 8:20, 6:22] = 230  # structure for the crops to find
    views = ViewMaker(small_config("simclr", ".").augment, channels=1, seed=seed).views(images)
    return views


def step_inputs(method, views) -> dict:
    """What the loop passes a method: the views, and the labels if it trains on them."""
    labels = torch.arange(views[0].shape[0]) % 4
    return {"views": views, **({"labels": labels} if method.uses_labels else {})}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_contract(name, tmp_path):
    torch.manual_seed(0)
    method = build_method(small_config(name, tmp_path))
    out = method(**step_inputs(method, batch_of_views()))
    assert torch.isfinite(out["loss"])
    assert out["embedding"].ndim == 2 and out["embedding"].shape[0] == 32
    out["loss"].backward()
    missing = [
        n for n, p in method.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())
    ]
    assert not missing, f"no gradient reaches {missing}"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_loss_falls_over_a_few_steps(name, tmp_path):
    torch.manual_seed(0)
    method = build_method(small_config(name, tmp_path))
    optimizer = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    batches = [batch_of_views(seed=i) for i in range(4)]
    losses = []
    for step in range(16):
        out = method(**step_inputs(method, batches[step % 4]))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        method.after_step(step, 16)
        losses.append(out["loss"].item())
    # From step 2 on, MoCo's queue (64 keys) holds real keys instead of its random start,
    # which makes the task harder; compare from there.
    assert sum(losses[-3:]) / 3 < sum(losses[2:5]) / 3, losses


def test_registry_rejects_duplicates_and_lists_known(tmp_path):
    with pytest.raises(ValueError, match="already registered"):
        register_method("simclr")(type("Other", (), {}))
    assert "simclr" in METHODS


# Methods with a momentum target, and the momentum their target follows after step 3 of 10.
TARGET_MOMENTUM = {
    "byol": lambda m: cosine_momentum(3, 10, m),  # BYOL Sec. 3.2: 0.996 -> 1 along a cosine
    "moco_v3": lambda m: cosine_momentum(3, 10, m),  # MoCo v3: 0.99 -> 1 along a cosine
    "moco_v1": lambda m: m,  # MoCo v1/v2 Eq. 2: constant
    "moco_v2": lambda m: m,
}


@pytest.mark.parametrize("name", sorted(TARGET_MOMENTUM))
def test_target_gets_no_gradient_and_follows_the_ema(name, tmp_path):
    torch.manual_seed(0)
    method = build_method(small_config(name, tmp_path))
    assert set(method.target_of) == {"backbone", "projector"}
    targets = list(method.target_backbone.parameters()) + list(method.target_projector.parameters())
    online = list(method.backbone.parameters()) + list(method.projector.parameters())
    for t, o in zip(targets, online):
        torch.testing.assert_close(t, o)  # the target starts as a copy
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    method(batch_of_views())["loss"].backward()
    assert all(t.grad is None and not t.requires_grad for t in targets)
    optimizer.step()
    before = [t.clone() for t in targets]
    method.after_step(step=3, total_steps=10)
    m = TARGET_MOMENTUM[name](method.config.method.ema_momentum)
    for old, new, o in zip(before, targets, online):
        torch.testing.assert_close(new, m * old + (1 - m) * o)


def test_methods_take_their_papers_defaults(tmp_path):
    def method_config(name, **fields):
        return config_from_dict({"method": {"name": name, **fields}, "data": {"path": str(tmp_path)}}).method

    assert (method_config("moco_v1").temperature, method_config("moco_v1").ema_momentum) == (0.07, 0.999)
    assert method_config("moco_v2").temperature == 0.2 and method_config("moco_v2").queue_size == 65536
    assert (method_config("moco_v3").temperature, method_config("moco_v3").ema_momentum) == (1.0, 0.99)
    assert method_config("byol").ema_momentum == 0.996 and method_config("byol").projection_dim == 256
    assert method_config("simsiam").predictor_hidden_dim == 512
    assert method_config("moco_v1", temperature=0.5).temperature == 0.5  # what the user sets wins


@pytest.mark.parametrize("name", ["moco_v1", "moco_v2"])
def test_moco_queue_takes_this_steps_keys_after_the_step(name, tmp_path):
    torch.manual_seed(0)
    method = build_method(small_config(name, tmp_path))
    views = batch_of_views()
    start = method.queue.keys.clone()
    out = method(views)
    # Eq. 1's negatives this step are the queue as it was: the batch's keys are not yet in it.
    torch.testing.assert_close(method.queue.keys, start)
    with torch.no_grad():
        keys = method.target_projector(method.target_backbone(views[1]))
    out["loss"].backward()
    method.after_step(0, 10)
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
    views = batch_of_views()
    loss = method(views)["loss"]
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
    view_maker = ViewMaker(config.augment, channels=1)
    stds, ranks = [], []
    for step in range(steps):
        out = method(view_maker.views(images[step * 64 : (step + 1) * 64]))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
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
    views = batch_of_views()
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
