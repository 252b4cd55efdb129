import math

import pytest
import torch

from ssl_ray.nn.backbones import build_backbone
from ssl_ray.nn.heads import hidden_layers, mlp
from ssl_ray.nn.schedules import warmup_cosine


@pytest.mark.parametrize(
    "name, width, blocks, stride, channels, dim",
    [
        ("resnet18", 64, None, 1, 3, 512),
        ("resnet18", 16, (1, 1, 1, 1), 1, 1, 128),
        ("resnet18", 32, (1, 1, 1, 1), 2, 1, 256),
        ("resnet34", 8, None, 1, 1, 64),
        ("resnet50", 8, (1, 1, 1, 1), 1, 3, 256),
    ],
)
def test_backbone_shapes(name, width, blocks, stride, channels, dim):
    net, feature_dim = build_backbone(name, channels, width, blocks, stride)
    assert feature_dim == dim
    images = torch.randint(0, 256, (2, channels, 28, 28), dtype=torch.uint8)
    assert net(images).shape == (2, dim)
    assert net(images.float() / 255).shape == (2, dim)


def test_small_image_stem_keeps_resolution():
    net, _ = build_backbone("resnet18", 1, 8)
    resnet = net[1]
    assert resnet.conv1.kernel_size == (3, 3) and resnet.conv1.stride == (1, 1)
    assert isinstance(resnet.maxpool, torch.nn.Identity)
    stages = torch.nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1)
    assert stages(torch.zeros(1, 1, 28, 28)).shape[-2:] == (28, 28)


def test_imagenet_stem_quarters_the_resolution_and_matches_torchvision():
    from torchvision.models import resnet50

    net, dim = build_backbone("resnet50", 3, 64, stem="imagenet")
    resnet = net[1]
    assert resnet.conv1.kernel_size == (7, 7) and resnet.conv1.stride == (2, 2)
    stages = torch.nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
    assert stages(torch.zeros(1, 3, 224, 224)).shape[-2:] == (56, 56)
    # The full-width ImageNet ResNet-50 is torchvision's, less its classifier.
    reference = resnet50()
    count = sum(p.numel() for p in resnet.parameters())
    assert dim == 2048 and count == sum(p.numel() for p in reference.parameters()) - 2048 * 1000 - 1000


def test_uint8_and_unit_float_inputs_agree():
    net, _ = build_backbone("resnet18", 1, 8, (1, 1, 1, 1))
    net.eval()
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    torch.testing.assert_close(net(images), net(images.float() / 255))


def test_vit_encoder_takes_global_and_local_crops():
    """The ViT option (DINO's other backbone): class-token features of every crop size that
    is a multiple of the patch, position embeddings interpolated; the config refuses crops
    the patch does not divide, naming the field."""
    from ssl_ray.config import ConfigError, config_from_dict
    from ssl_ray.nn.backbones import build_encoder

    config = config_from_dict(
        {
            "method": {"name": "dino"},
            "data": {"path": "."},
            "model": {"backbone": "vit_tiny", "patch_size": 4, "vit_depth": 2},
            "augment": {"local_crops": 2, "local_image_size": 12},
        }
    )
    encoder, dim = build_encoder(config.model, 1, config.augment.image_size)
    assert dim == 192
    for size in (28, 12):
        assert encoder(torch.randint(0, 256, (2, 1, size, size), dtype=torch.uint8)).shape == (2, 192)
    with pytest.raises(ConfigError, match=r"model\.patch_size: 5 does not divide the 12 px crops"):
        config_from_dict(
            {
                **config.model_dump(mode="json"),
                "model": {"backbone": "vit_tiny", "patch_size": 5},
                "data": {"path": "."},
            }
        )


def test_mlp_layout():
    head = mlp([32, 64, 16])
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert head(torch.randn(4, 32)).shape == (4, 16)
    kept = hidden_layers([32, 64, 64])  # what an encoder keeps of a head: every layer activated
    assert [type(m).__name__ for m in kept] == ["Linear", "BatchNorm1d", "ReLU"] * 2
    with pytest.raises(ValueError):
        mlp([8])


def test_warmup_cosine_shape():
    peak, total, warm = 0.6, 100, 10
    values = [warmup_cosine(s, total, warm, peak, final=0.01) for s in range(total + 1)]
    assert values[0] == pytest.approx(peak / warm)
    assert values[warm - 1] == pytest.approx(peak)
    assert values[warm] == pytest.approx(peak)
    assert values[total] == pytest.approx(0.01)
    middle = warm + (total - warm) // 2
    assert values[middle] == pytest.approx(0.01 + 0.5 * (peak - 0.01))
    decay = values[warm:]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert warmup_cosine(5, 100, 0, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.05)))


def test_memory_format_is_channels_last_on_gpus_only_unless_asked():
    from ssl_ray.nn.precision import resolve_memory_format

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_memory_format("auto", gpu) == torch.channels_last
    assert resolve_memory_format("auto", cpu) == torch.contiguous_format
    assert resolve_memory_format("channels_last", cpu) == torch.channels_last
    assert resolve_memory_format("contiguous", gpu) == torch.contiguous_format
