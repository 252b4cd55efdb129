"""DenseCL (Wang et al. 2021): the matching of positions by feature similarity on a fixed
case, the dense term against a hand computation position by position, the two terms' mix, and
the queues' update. The method contract, the falling loss, the key encoder's schedule and the
state round trip come from the registry-wide tests (test_methods); a Ray Train run with resume
from test_pretrain_e2e (slow)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from test_methods import batch_for

from ssl_ray.methods import METHODS
from ssl_ray.nn.backbones import build_backbone, dense_map
from ssl_ray.nn.dense_matching import gather_positions, most_similar_positions
from ssl_ray.sections import AugmentConfig


def test_each_position_is_matched_to_the_most_similar_one_of_the_other_view():
    # Query map 1 x 3 (D 2), key map 2 x 2: cosine decides, not length or place.
    queries = torch.tensor([[1.0, 0.0], [0.0, 3.0], [1.0, 1.1]]).T.reshape(1, 2, 1, 3)
    keys = torch.tensor([[0.0, 0.2], [5.0, 0.1], [-1.0, -1.0], [1.0, 1.0]]).T.reshape(1, 2, 2, 2)
    positions = most_similar_positions(queries, keys)
    assert positions.tolist() == [[1, 0, 3]]
    gathered = gather_positions(keys, positions)
    assert torch.equal(gathered[0].T, keys.flatten(2)[0].T[[1, 0, 3]])
    # Each image's positions are matched within that image only.
    two = most_similar_positions(torch.cat([queries, -queries]), torch.cat([keys, keys]))
    assert two.tolist() == [[1, 0, 3], [2, 2, 2]]


def _densecl(dense_weight: float):
    cls = METHODS["densecl"]
    params = cls.Params(
        name="densecl",
        projection_hidden_dim=16,
        projection_dim=8,
        queue_size=6,
        temperature=0.2,
        dense_weight=dense_weight,
    )
    torch.manual_seed(0)
    encoder, width = build_backbone("resnet18", 1, width=8, blocks=(1, 1, 1, 1))
    return cls(params, encoder, width, cls.recipe(params, AugmentConfig(image_size=28)))


def test_the_dense_term_is_infonce_of_matched_positions_against_the_dense_queue():
    method = _densecl(dense_weight=1.0).eval()  # eval: BN the same in the method and by hand
    batch = batch_for(method, n=4)
    loss = method(batch)["loss"]
    with torch.no_grad():
        q_maps, k_maps = dense_map(method.backbone, batch.views[0]), dense_map(method.target_backbone, batch.views[1])
        q_dense, k_dense = method.dense_projector(q_maps), method.target_dense_projector(k_maps)
        negatives = F.normalize(method.dense_queue.keys, dim=1)
    terms = []
    for image in range(4):
        q_feat, k_feat = q_maps[image].flatten(1), k_maps[image].flatten(1)  # (D, L)
        for i in range(q_feat.shape[1]):
            cosines = [F.cosine_similarity(q_feat[:, i], k_feat[:, j], dim=0) for j in range(k_feat.shape[1])]
            j = max(range(len(cosines)), key=lambda j: cosines[j])
            q = F.normalize(q_dense[image].flatten(1)[:, i], dim=0)
            k = F.normalize(k_dense[image].flatten(1)[:, j], dim=0)
            logits = torch.cat([(q @ k)[None], negatives @ q]) / 0.2
            terms.append(-(logits[0] - torch.logsumexp(logits, dim=0)))
    assert len(terms) == 4 * q_maps.shape[-1] * q_maps.shape[-2] > 4
    torch.testing.assert_close(loss, torch.stack(terms).mean())


def test_the_loss_mixes_the_global_and_dense_terms_by_lambda():
    losses = {}
    for weight in (0.0, 0.3, 1.0):
        method = _densecl(weight).eval()
        losses[weight] = method(batch_for(method, n=4))["loss"].item()
    assert not math.isclose(losses[0.0], losses[1.0], rel_tol=1e-3)
    assert math.isclose(losses[0.3], 0.7 * losses[0.0] + 0.3 * losses[1.0], rel_tol=1e-5)


def test_both_queues_take_one_key_per_image_after_the_step():
    method = _densecl(dense_weight=0.5)
    out = method(batch_for(method, n=4))
    before = method.dense_queue.keys.clone()
    method.after_step(out)
    assert int(method.queue.pointer) == int(method.dense_queue.pointer) == 4
    with torch.no_grad():
        expected = method.target_dense_projector(dense_map(method.target_backbone, batch_for(method, n=4).views[1]))
    torch.testing.assert_close(method.dense_queue.keys[:4], expected.mean(dim=(2, 3)))
    assert torch.equal(method.dense_queue.keys[4:], before[4:]), "the older rows stay until their turn"
