import torch
from gloo import run_on_two_workers

from ssl_ray.nn.distributed import shuffle_across_workers, unshuffle_across_workers
from ssl_ray.nn.queue import KeyQueue


def test_enqueue_order_and_wrap_around():
    queue = KeyQueue(dim=2, size=5)
    first = torch.arange(6, dtype=torch.float32).reshape(3, 2)  # rows 0..2
    queue.enqueue(first)
    torch.testing.assert_close(queue.keys[:3], first)
    assert int(queue.pointer) == 3
    second = 10 + torch.arange(8, dtype=torch.float32).reshape(4, 2)  # rows 3, 4, then 0, 1
    queue.enqueue(second)
    torch.testing.assert_close(queue.keys[3:5], second[:2])
    torch.testing.assert_close(queue.keys[0:2], second[2:])
    torch.testing.assert_close(queue.keys[2], first[2])  # the oldest survivor
    assert int(queue.pointer) == 2


def test_more_keys_than_slots_keeps_the_newest():
    queue = KeyQueue(dim=1, size=3)
    queue.enqueue(torch.arange(7, dtype=torch.float32).unsqueeze(1))
    assert sorted(queue.keys.squeeze(1).tolist()) == [4.0, 5.0, 6.0]


def test_queue_state_survives_a_checkpoint_round_trip():
    queue = KeyQueue(dim=4, size=8)
    queue.enqueue(torch.randn(5, 4))
    restored = KeyQueue(dim=4, size=8)
    restored.load_state_dict(queue.state_dict())
    torch.testing.assert_close(restored.keys, queue.keys)
    assert int(restored.pointer) == 5
    new = torch.randn(2, 4)
    queue.enqueue(new)
    restored.enqueue(new)
    torch.testing.assert_close(restored.keys, queue.keys)


def test_negatives_are_detached_copies():
    queue = KeyQueue(dim=3, size=4)
    negatives = queue.negatives()
    negatives.zero_()
    assert queue.keys.abs().sum() > 0 and not negatives.requires_grad


def _two_worker_enqueue(rank: int):
    queue = KeyQueue(dim=2, size=6)
    local = torch.full((2, 2), float(rank + 1))  # worker 0 sends 1s, worker 1 sends 2s
    queue.enqueue(local)
    return queue.keys[:4].clone(), int(queue.pointer)


def test_keys_of_both_gloo_workers_enter_the_queue():
    results = run_on_two_workers(_two_worker_enqueue)
    for rank in (0, 1):
        keys, pointer = results[rank]
        assert pointer == 4
        # Both workers hold the same queue: worker 0's keys, then worker 1's.
        torch.testing.assert_close(keys, torch.tensor([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0], [2.0, 2.0]]))


def _shuffle_and_restore(rank: int):
    torch.manual_seed(rank)  # different local RNGs: the order must still be shared
    batch = (10 * rank + torch.arange(4, dtype=torch.float32)).unsqueeze(1)
    shuffled, restore = shuffle_across_workers(batch)
    restored = unshuffle_across_workers(shuffled * 2, restore)
    return batch, shuffled, restored


def test_shuffle_bn_deals_the_global_batch_and_restores_each_workers_order():
    results = run_on_two_workers(_shuffle_and_restore)
    dealt = torch.cat([results[rank][1] for rank in (0, 1)]).squeeze(1)
    everything = torch.cat([results[rank][0] for rank in (0, 1)]).squeeze(1)
    # Every image of the global batch goes to exactly one worker's key encoder ...
    assert sorted(dealt.tolist()) == sorted(everything.tolist())
    # ... mixed across workers (a fixed seed makes this exact: 8 rows, shared permutation) ...
    assert results[0][1].squeeze(1).tolist() != results[0][0].squeeze(1).tolist()
    # ... and each worker gets the outputs for its own rows back in its own order.
    for rank in (0, 1):
        batch, _, restored = results[rank]
        torch.testing.assert_close(restored, batch * 2)
