"""``--protocol segment``: the dense benchmark on scene shards (``ssl-ray prepare --scenes``).

Each encoder's feature map before pooling (``nn.backbones.dense_map``) is taken, frozen, for
every scene of the train and test sets; a linear head (``segment.fit_linear_head``: a 1x1
convolution, its logits upsampled to the mask) is trained on the train scenes' masks and
scored on the test scenes': mIoU over the classes (the background one of them) and pixel
accuracy. The scenes are small (a few thousand of 56-96 px): they are read whole, and the
features made in this process, on its GPU where it has one.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch import nn

from ssl_ray.data.errors import DataSourceError
from ssl_ray.data.objectstore import describe_failure, filesystem_for
from ssl_ray.eval.segment import SegmentScores, confusion, fit_linear_head, predict, scores
from ssl_ray.nn.backbones import dense_map
from ssl_ray.sections import StorageConfig

PICTURE_SCENES = 8  # test scenes in the predicted-mask picture


@dataclass(frozen=True)
class Scenes:
    images: torch.Tensor  # (N, C, S, S) uint8
    masks: torch.Tensor  # (N, S, S) uint8: 0 the background, k + 1 class k
    classes: tuple[str, ...]  # the mask's classes by value, the background first


def load_scenes(url: str, storage: StorageConfig, channels: int) -> Scenes:
    """Every scene under ``url`` (a folder or prefix of scene shards), refused with the reason
    when it holds none or its images have another channel count than the encoder reads."""
    filesystem, root = filesystem_for(url, storage.endpoint_url, storage.region)
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        shards = sorted(i.path for i in infos if i.base_name.endswith(".parquet"))
        if not shards:
            raise DataSourceError(f"{url}: no scene shards (write them with ssl-ray prepare --scenes)")
        tables = [pq.read_table(path, filesystem=filesystem) for path in shards]
        manifest = {}
        if any(i.base_name == "manifest.json" for i in infos):
            with filesystem.open_input_stream(f"{root}/manifest.json") as stream:
                manifest = json.loads(stream.read())
    except OSError as error:
        raise DataSourceError(describe_failure(url, error)) from None
    if any("mask" not in t.column_names for t in tables):
        raise DataSourceError(f"{url}: shards without a mask column are not scenes (ssl-ray prepare --scenes)")
    images, masks = [], []
    for table in tables:
        for image, mask in zip(table["image"].to_pylist(), table["mask"].to_pylist()):
            images.append(np.asarray(Image.open(io.BytesIO(image))))
            masks.append(np.asarray(Image.open(io.BytesIO(mask))))
    stacked = np.stack(images)
    found = 1 if stacked.ndim == 3 else stacked.shape[-1]
    if found != channels:
        raise DataSourceError(f"{url}: scenes of {found}-channel images, and the encoder reads {channels}-channel ones")
    pixels = torch.from_numpy(stacked if stacked.ndim == 4 else stacked[..., None]).permute(0, 3, 1, 2).contiguous()
    classes = tuple(manifest.get("split", {}).get("mask_classes", ()))
    return Scenes(pixels, torch.from_numpy(np.stack(masks)), classes)


@torch.no_grad()
def dense_features(
    encoder: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 128
) -> torch.Tensor:
    encoder = encoder.to(device).eval()
    return torch.cat([dense_map(encoder, x.to(device)).float().cpu() for x in images.split(batch_size)])


def segment(
    encoder: nn.Module, train: Scenes, test: Scenes, classes: int, seed: int, device: torch.device
) -> tuple[SegmentScores, torch.Tensor]:
    """The linear head's scores on the test scenes, and its masks of the first of them."""
    head = fit_linear_head(dense_features(encoder, train.images, device), train.masks, classes, seed=seed)
    features = dense_features(encoder, test.images, device)
    predicted = predict(head, features, tuple(test.masks.shape[-2:]))
    return scores(confusion(predicted, test.masks, classes)), predicted[:PICTURE_SCENES]


def mask_colours(classes: int) -> torch.Tensor:
    """(classes, 3) colours in [0, 1], the background black, the others fixed and distinct."""
    generator = torch.Generator().manual_seed(7)
    colours = 0.25 + 0.75 * torch.rand(classes, 3, generator=generator)
    colours[0] = 0.0
    return colours


def picture_rows(test: Scenes, predicted: dict[str, torch.Tensor], classes: int) -> torch.Tensor:
    """(R, N, 3, S, S): the test scenes, their true masks, then each encoder's predicted ones."""
    n = min(PICTURE_SCENES, len(test.images))
    images = test.images[:n].float().div(255)
    images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    colours = mask_colours(classes)
    rows = [images, colours[test.masks[:n].long()].permute(0, 3, 1, 2)]
    rows += [colours[masks[:n].long()].permute(0, 3, 1, 2) for masks in predicted.values()]
    return torch.stack(rows)
