"""SimCLR v2 (its 3-layer projector, the first layer kept with the encoder through export,
evaluation and fine-tuning) and the distillation of a fine-tuned network into a student."""

from __future__ import annotations

import math

import pytest
import torch
from test_methods import batch_for, small_config

from ssl_ray.config import ConfigError, config_from_dict, load_config
from ssl_ray.eval.distill import distill_config
from ssl_ray.eval.finetune import RunSizes, finetune_config
from ssl_ray.nn.backbones import build_encoder
from ssl_ray.nn.distillation import SoftTargetCrossEntropy
from ssl_ray.train.build import build_method
from ssl_ray.train.checkpoint import encoder_state
from ssl_ray.train.trainer import run_pretraining

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def linear_widths(module: torch.nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, torch.nn.Linear)]


def test_the_encoder_keeps_the_projectors_first_layer(tmp_path):
    """3 projector layers (64 -> 64 -> 64 -> 32 at the test's sizes): the first is the
    encoder's last, so the features evaluated and fine-tuned are its 64-d ReLU outputs."""
    config = small_config("simclr_v2", tmp_path)
    assert config.encoder_head == (64,)
    method = build_method(config)
    assert linear_widths(method.backbone) == [(64, 64)]  # the backbone's pooled 64-d, then the kept layer
    assert linear_widths(method.projector) == [(64, 64), (64, 32)]
    assert method.feature_dim == 64
    features = method.backbone(batch_for(method).views[0])
    assert features.shape == (32, 64) and (features >= 0).all()  # after the kept layer's ReLU
    # What export and evaluation build from the config takes exactly the run's encoder weights.
    exported = encoder_state({"model": method.state_dict()})
    rebuilt, dim = build_encoder(config.model, 1, config.augment.image_size, config.encoder_head)
    rebuilt.load_state_dict(exported)  # strict: every name and shape matches
    assert dim == 64 and any(key.startswith("2.") for key in exported)
    # SimCLR keeps nothing: its encoder's weights are named as they always were.
    plain = build_method(small_config("simclr", tmp_path))
    assert small_config("simclr", tmp_path).encoder_head == ()
    assert not any(key.startswith("2.") for key in plain.backbone.state_dict())


@pytest.mark.parametrize("kept, layers", [(0, 3), (2, 3)])
def test_how_many_layers_the_encoder_keeps_is_a_setting(kept, layers, tmp_path):
    method = build_method(small_config("simclr_v2", tmp_path, kept_layers=kept, projection_layers=layers))
    assert len(linear_widths(method.backbone)) == kept and len(linear_widths(method.projector)) == layers - kept


def test_the_output_layer_cannot_be_kept(tmp_path):
    with pytest.raises(ConfigError, match=r"method\.kept_layers: 3 of a 3-layer projector would keep its output"):
        small_config("simclr_v2", tmp_path, kept_layers=3)


def test_fine_tuning_and_distillation_build_the_encoder_with_its_kept_layer(tmp_path):
    """Both runs change the method (supervised, distill) and carry the encoder's head in the
    model section, so their networks take the pretrained weights name for name."""
    pretraining = small_config("simclr_v2", tmp_path)
    encoder_keys = set(build_method(pretraining).backbone.state_dict())
    tuned = finetune_config(pretraining, 0.1, RunSizes(epochs=2, train_size=400))
    assert tuned.method.name == "supervised" and tuned.model.encoder_head == (64,)
    # The classes come from the data when the run starts; 10 here.
    tuned = config_from_dict({**tuned.model_dump(mode="json"), "method": {"name": "supervised", "num_classes": 10}})
    assert set(build_method(tuned).backbone.state_dict()) == encoder_keys
    student = distill_config(pretraining, 0.1, 10, RunSizes(train_size=400))
    assert student.method.name == "distill" and student.method.num_classes == 10
    assert student.data.label_fraction is None and student.train.epochs == 30  # the teacher's, at 10%
    distilled = build_method(student)
    assert set(distilled.backbone.state_dict()) == encoder_keys
    assert {f"teacher.{k}" for k in build_method(tuned).state_dict()} <= set(distilled.state_dict())


def test_soft_target_cross_entropy_by_hand():
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 5), torch.randn(3, 5)
    tau = 2.0
    expected = 0.0
    for s, t in zip(student.tolist(), teacher.tolist()):
        p = [math.exp(v / tau) for v in t]
        log_z = math.log(sum(math.exp(v / tau) for v in s))
        expected -= sum(pi / sum(p) * (v / tau - log_z) for pi, v in zip(p, s)) / 3
    assert SoftTargetCrossEntropy(tau)(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_the_student_learns_the_frozen_teachers_predictions(tmp_path):
    """The teacher gets no gradient and stays in eval mode (its fine-tuned BN statistics); a
    student that is the teacher has nothing to learn (the loss is at its minimum, the
    teacher's entropy: zero gradient on the classifier)."""
    torch.manual_seed(0)
    method = build_method(small_config("distill", tmp_path))
    method.train()
    assert not method.teacher.training and not any(p.requires_grad for p in method.teacher.parameters())
    batch = batch_for(method)
    method(batch)["loss"].backward()
    assert method.classifier.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.teacher.parameters())
    for name in ("backbone", "feature_norm", "classifier"):
        getattr(method, name).load_state_dict(getattr(method.teacher, name).state_dict())
    method.zero_grad()
    method.eval()
    method(batch)["loss"].backward()
    assert method.classifier.weight.grad.abs().max() < 1e-6


def test_distillation_without_a_teacher_is_refused_before_anything_starts(fashion_mnist_dir):
    import ray

    config = load_config(ROOT / "pipelines" / "distill_fashion_mnist.yaml", [f"data.path={fashion_mnist_dir}"])
    with pytest.raises(
        ConfigError, match=r"^method\.name: distill learns from a fine-tuned teacher.*--protocol distill"
    ):
        run_pretraining(config)
    assert not ray.is_initialized()
