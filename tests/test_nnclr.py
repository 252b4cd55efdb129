"""NNCLR's own parts (Dwibedi et al. 2021): the neighbour lookup against a hand computation,
the support set filled from the step's projections, and the set coming back from a checkpoint.
The method contract, the falling loss and the Ray Train run come from the shared tests."""

import math

import torch
import torch.nn.functional as F
from steps import take_step
from test_methods import batch_for, small_config

from ssl_ray.methods.nnclr import nearest_neighbours
from ssl_ray.train.build import build_method
from ssl_ray.train.checkpoint import load_state, save_state


def test_nearest_neighbour_is_the_support_row_of_highest_cosine_by_hand():
    # Unnormalised on purpose: the lookup is by angle, not by dot product or distance.
    support = torch.tensor([[10.0, 0.0], [0.0, 1.0], [-1.0, -1.0], [1.0, 1.0]])
    z = torch.tensor([[0.9, 0.1], [0.2, 5.0], [-3.0, -2.0], [1.0, 1.2], [2.0, 0.0]])
    # Angles by hand: z0 at 6.3 deg is nearest row 0 (0 deg) over row 3 (45 deg); z1 at 87.7 deg
    # nearest row 1 (90); z2 at 213.7 deg nearest row 2 (225); z3 at 50.2 deg nearest row 3 (45);
    # z4 on row 0's axis, although row 3's dot product with it (2.0) is below row 0's (20).
    by_hand = [0, 1, 2, 3, 0]
    angles = torch.rad2deg(torch.atan2(z[:, 1], z[:, 0]))
    assert [round(a, 1) for a in angles.tolist()] == [6.3, 87.7, 213.7 - 360, 50.2, 0.0]
    expected = F.normalize(support[by_hand], dim=1)
    torch.testing.assert_close(nearest_neighbours(z, support), expected)
    assert nearest_neighbours(z.requires_grad_(), support).grad_fn is None, "no gradient through the lookup"


def test_the_support_set_takes_this_steps_projections_after_the_step(tmp_path):
    torch.manual_seed(0)
    config = small_config("nnclr", tmp_path)  # queue of 64, batch of 32
    method = build_method(config)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.05)
    start = method.support.keys.clone()
    batch = batch_for(method)
    out = take_step(method, optimizer, 0, 10, batch)
    torch.testing.assert_close(method.support.keys[:32], out["projections"])
    torch.testing.assert_close(method.support.keys[32:], start[32:])
    assert torch.allclose(out["projections"].norm(dim=1), torch.ones(32))
    assert int(method.support.pointer) == 32 and math.isfinite(out["loss"].item())


def test_the_support_set_comes_back_from_a_checkpoint(tmp_path):
    """What a resume does: the worker loop's state file, loaded into a freshly built method."""
    torch.manual_seed(0)
    config = small_config("nnclr", tmp_path)
    method = build_method(config)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.05)
    for step in range(3):  # 96 projections into 64 slots: wrapped once
        take_step(method, optimizer, step, 10, batch_for(method, seed=step))
    (tmp_path / "ckpt").mkdir()
    save_state(tmp_path / "ckpt", {"model": method.state_dict(), "epoch": 1, "step": 3})
    torch.manual_seed(1)
    resumed = build_method(config)
    assert not torch.equal(resumed.support.keys, method.support.keys)
    resumed.load_state_dict(load_state(tmp_path / "ckpt")["model"])
    torch.testing.assert_close(resumed.support.keys, method.support.keys)
    assert int(resumed.support.pointer) == 96 % 64
    batch = batch_for(method, seed=9)
    method.eval(), resumed.eval()
    torch.testing.assert_close(resumed(batch)["loss"], method(batch)["loss"])
