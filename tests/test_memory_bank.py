"""PIRL's memory bank and its NCE loss against their formulas: the bank's EMA, its rows the
same on every worker, the loss by hand (NPID's h with the estimated Z), and PIRL's Eq. 4."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gloo import run_on_two_workers

from ssl_ray.methods import METHODS
from ssl_ray.nn.backbones import build_backbone
from ssl_ray.nn.losses import MemoryNCELoss
from ssl_ray.nn.memory_bank import MemoryBank
from ssl_ray.sections import AugmentConfig


def test_bank_rows_follow_their_moving_average_and_stay_unit_vectors():
    torch.manual_seed(0)
    bank = MemoryBank(size=10, dim=4, momentum=0.5)
    before = bank.memory.clone()
    rows, features = torch.tensor([2, 7]), F.normalize(torch.randn(2, 4), dim=1)
    bank.update(rows, features)
    expected = F.normalize(0.5 * before[rows] + 0.5 * features, dim=1)  # PIRL Sec. 3.2
    torch.testing.assert_close(bank.memory[rows], expected)
    untouched = [i for i in range(10) if i not in (2, 7)]
    torch.testing.assert_close(bank.memory[untouched], before[untouched])
    torch.testing.assert_close(bank.memory.norm(dim=1), torch.ones(10))
    assert "memory" in bank.state_dict()  # checkpointed with the method
    with pytest.raises(IndexError, match="outside the bank's 10 rows"):
        bank.update(torch.tensor([10]), features[:1])
    with pytest.raises(ValueError, match="momentum"):
        MemoryBank(4, 2, momentum=1.5)


def _two_worker_update(rank: int):
    torch.manual_seed(0)  # the same initial bank on both, as a seeded run builds it
    bank = MemoryBank(size=6, dim=3, momentum=0.0)
    rows = torch.tensor([0, 1]) if rank == 0 else torch.tensor([4, 5])
    bank.update(rows, torch.full((2, 3), float(rank + 1)))
    return bank.memory


def test_every_worker_holds_the_same_bank():
    results = run_on_two_workers(_two_worker_update)
    torch.testing.assert_close(results[0], results[1])
    unit = torch.full((3,), 1 / math.sqrt(3))
    for row in (0, 1, 4, 5):  # each worker's rows written on both (momentum 0: the new features)
        torch.testing.assert_close(results[0][row], unit)


def nce_by_hand(v, positives, negatives, tau, n, log_z):
    """NPID Eqs. 2-6 in float64, one row and one negative at a time."""
    k = len(negatives)
    total = 0.0
    for row in range(len(v)):
        p = math.exp(float(v[row] @ positives[row]) / tau - log_z)
        total -= math.log(p / (p + k / n))
        for negative in negatives:
            q = math.exp(float(v[row] @ negative) / tau - log_z)
            total -= math.log(1 - q / (q + k / n))
    return total / len(v)


def test_memory_nce_matches_the_hand_computation_and_holds_its_normaliser():
    generator = torch.Generator().manual_seed(1)
    unit = lambda *shape: F.normalize(torch.randn(*shape, generator=generator, dtype=torch.float64), dim=-1)  # noqa: E731
    v, positives, negatives = unit(5, 8), unit(5, 8), unit(12, 8)
    loss = MemoryNCELoss(temperature=0.5, dataset_size=100)
    got = loss(v.float(), positives.float(), negatives.float()).item()
    # Z from the first batch's negatives: n * mean exp(v . m / tau).
    log_z = math.log(100 * float((v @ negatives.T / 0.5).exp().mean()))
    assert float(loss.log_normaliser) == pytest.approx(log_z, rel=1e-5)
    assert got == pytest.approx(nce_by_hand(v.numpy(), positives.numpy(), negatives.numpy(), 0.5, 100, log_z), rel=1e-4)
    # Held, not re-estimated: another batch is scored with the first Z.
    others = unit(12, 8)
    again = loss(v.float(), positives.float(), others.float()).item()
    assert float(loss.log_normaliser) == pytest.approx(log_z, rel=1e-5)
    assert again == pytest.approx(nce_by_hand(v.numpy(), positives.numpy(), others.numpy(), 0.5, 100, log_z), rel=1e-4)
    # Better aligned positives: a lower loss.
    assert loss(v.float(), v.float(), negatives.float()).item() < got


def test_pirl_mixes_its_two_terms_by_lambda_and_updates_the_bank_after_the_step():
    torch.manual_seed(0)
    cls = METHODS["pirl"]
    params = cls.Params(name="pirl", num_samples=40, negatives=16, jigsaw_weight=0.3, tile_dim=8, projection_dim=8)
    encoder, width = build_backbone("resnet18", 1, width=8, blocks=(1, 1, 1, 1))
    method = cls(params, encoder, width, cls.recipe(params, AugmentConfig(global_crops=1, image_size=42))).eval()
    images = np.random.default_rng(0).integers(0, 256, (8, 28, 28), dtype=np.uint8)
    index = torch.arange(8) * 5  # rows 0, 5, ..., 35 of the bank
    batch = method.recipe.batch_of(images, channels=1, seed=0, sample_index=index)
    before = method.bank.memory.clone()
    torch.manual_seed(3)
    out = method(batch)
    with torch.no_grad():
        torch.manual_seed(3)  # the same negatives
        memories, negatives = method.bank[index], method.bank.sample(16)
        f = F.normalize(method.image_head(method.backbone(batch.views[0])), dim=1)
        tiles = batch["tiles"]
        g = method.tile_head(method.backbone(tiles.flatten(0, 1)).view(8, 9, -1))
        g = F.normalize(g, dim=1)
        expected = 0.3 * method.criterion(g, memories, negatives) + 0.7 * method.criterion(f, memories, negatives)
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(method.bank.memory, before)  # the step's negatives are the bank as it was
    method.after_step(out)
    torch.testing.assert_close(method.bank.memory[index], F.normalize(0.5 * before[index] + 0.5 * f, dim=1))
    others = [i for i in range(40) if i % 5]
    torch.testing.assert_close(method.bank.memory[others], before[others])
