"""Self-supervised losses as small modules, each citing the paper equation it implements."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ssl_ray.nn.distributed import all_reduce_mean, gather_no_grad, gather_with_grad, rank


def in_fp32(forward):
    """Run a loss outside autocast, on fp32 inputs. Under bf16 autocast a similarity matmul
    would run in bf16 (8 bits of mantissa) even on fp32 inputs, and logits divided by a
    temperature of 0.1 would carry errors of ~0.04; the encoder stays in bf16, the loss not."""

    @functools.wraps(forward)
    def wrapped(self, *tensors, **kwargs):
        device_type = next((t.device.type for t in tensors if isinstance(t, torch.Tensor)), "cpu")
        with torch.autocast(device_type, enabled=False):
            return forward(self, *(_fp32(t) for t in tensors), **{k: _fp32(v) for k, v in kwargs.items()})

    return wrapped


def _fp32(value):
    """Floating tensors in fp32; labels, indices and everything else as they are."""
    return value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (N, D) tensors of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _views_against_every_view(z1: torch.Tensor, z2: torch.Tensor, temperature: float):
    """The code path the contrastive losses over 2N views share (NT-Xent, DCL, SupCon).

    Anchors: this worker's 2n views, l2-normalised. Candidates: every worker's 2N views
    (gathered with gradient, so negatives on other workers pass their gradient back). Returns
    ``logits`` (2n, 2N) = cosine / tau with each anchor's own column at -inf, ``positive``
    (2n,) the column of each anchor's other view."""
    _check_pair(z1, z2)
    local = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    # Every worker's views as candidates: [z1 of all workers, z2 of all workers].
    all_z1 = gather_with_grad(local[:n])
    candidates = torch.cat([all_z1, gather_with_grad(local[n:])])
    total = all_z1.shape[0]
    rows = torch.arange(n, device=local.device) + rank() * n
    own = torch.cat([rows, rows + total])  # where each local view sits among the candidates
    positive = torch.cat([rows + total, rows])
    logits = local @ candidates.T / temperature
    logits[torch.arange(2 * n, device=local.device), own] = float("-inf")
    return logits, positive


class NTXentLoss(nn.Module):
    """Normalised temperature-scaled cross-entropy (SimCLR, Chen et al. 2020, Eq. 1).

    For the 2N views of a batch (N images, two views each),
    ``l(i, j) = -log( exp(sim(z_i, z_j)/tau) / sum_{k != i} exp(sim(z_i, z_k)/tau) )``
    with ``sim`` the cosine similarity, and the loss is the mean of ``l`` over all 2N ordered
    positive pairs (Algorithm 1). Under DDP the negatives are the views of every worker's batch
    (gathered with gradient), as in the paper's large-batch training.

    Shapes: ``z1, z2``: (N, D), row i of each from the same image. Returns a scalar.
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature

    @in_fp32
    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        logits, positive = _views_against_every_view(z1, z2, self.temperature)
        return F.cross_entropy(logits, positive)


class DecoupledContrastiveLoss(nn.Module):
    """Decoupled contrastive loss (DCL, Yeh et al. 2022, arXiv:2110.06848): NT-Xent without the
    positive pair in the denominator, which removes the negative-positive coupling that makes
    NT-Xent need large batches:
    ``l_i = -w_i sim(z_i, z_j)/tau + log sum_{k != i, k != j} exp(sim(z_i, z_k)/tau)``.

    ``weight_sigma=None``: DCL, ``w_i = 1``. A value (the paper's 0.5): DCLW, the von
    Mises-Fisher weighting ``w_i = 2 - exp(sim_i/sigma) / mean_k exp(sim_k/sigma)`` over the
    positive similarities of the global batch, which weighs hard positives (low similarity)
    up. The weight is held constant (no gradient), as a weight. Mean over all 2N anchors (the
    paper sums the two one-way losses: the same up to a factor of 2).

    Shapes: ``z1, z2``: (N, D), row i of each from the same image. Returns a scalar.
    """

    def __init__(self, temperature: float = 0.1, weight_sigma: float | None = None) -> None:
        super().__init__()
        _check_temperature(temperature)
        if weight_sigma is not None and weight_sigma <= 0:
            raise ValueError(f"weight_sigma must be > 0 (or None for unweighted DCL), got {weight_sigma}")
        self.temperature = temperature
        self.weight_sigma = weight_sigma

    @in_fp32
    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        logits, positive = _views_against_every_view(z1, z2, self.temperature)
        rows = torch.arange(logits.shape[0], device=logits.device)
        positive_logit = logits[rows, positive]
        negatives = logits.clone()
        negatives[rows, positive] = float("-inf")  # decoupled: the positive leaves the denominator
        weight = torch.ones_like(positive_logit)
        if self.weight_sigma is not None:
            with torch.no_grad():
                similarity = positive_logit * self.temperature  # cosine of each positive pair
                global_similarity = gather_no_grad(similarity[: z1.shape[0]])  # one per image
                scale = torch.exp(global_similarity / self.weight_sigma).mean()
                weight = 2 - torch.exp(similarity / self.weight_sigma) / scale
        return (-weight * positive_logit + torch.logsumexp(negatives, dim=1)).mean()


class SupConLoss(nn.Module):
    """Supervised contrastive loss (Khosla et al. 2020, Eq. 2, "L^sup_out"): NT-Xent where
    every view of the same label is a positive,
    ``l_i = -1/|P(i)| sum_{p in P(i)} log( exp(sim(z_i, z_p)/tau) / sum_{a != i} exp(sim(z_i, z_a)/tau) )``
    with P(i) every other view (any worker's) of anchor i's label; the other view of its own
    image is always among them, so with all labels distinct this is NT-Xent. Mean over anchors.

    Shapes: ``z1, z2``: (N, D); ``labels``: (N,) integers, row i's label. Returns a scalar.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature

    @in_fp32
    def forward(self, z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.shape != (z1.shape[0],):
            raise ValueError(f"expected one label per row of z1 ({z1.shape[0]}), got shape {tuple(labels.shape)}")
        logits, _ = _views_against_every_view(z1, z2, self.temperature)
        all_labels = gather_no_grad(labels).repeat(2)  # label of each candidate view
        anchors = torch.cat([labels, labels])
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        positives = anchors[:, None] == all_labels[None, :]
        positives &= torch.isfinite(logits)  # not the anchor itself
        mean_positive = log_prob.masked_fill(~positives, 0.0).sum(dim=1) / positives.sum(dim=1)
        return -mean_positive.mean()


class InfoNCELoss(nn.Module):
    """InfoNCE of queries against keys (MoCo, He et al. 2020, Eq. 1):
    ``L_q = -log( exp(q.k+ / tau) / sum_{i=0}^{K} exp(q.k_i / tau) )`` over l2-normalised vectors.

    - With ``negatives`` (K, D) (MoCo v1/v2's queue): logits are ``[q.k+, q.negatives]`` and the
      positive is column 0.
    - Without (MoCo v3, Chen et al. 2021, Algorithm 1): the keys of every worker's batch are the
      candidates and the positive is the query's own key. MoCo v3 also scales the loss by
      ``2 * tau``; that belongs to the method, not here.

    Keys get no gradient (they come from the target network). Shapes: ``q, k`` (N, D). Scalar.
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature

    @in_fp32
    def forward(self, q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor | None = None) -> torch.Tensor:
        _check_pair(q, k)
        q = F.normalize(q.float(), dim=1)
        k = F.normalize(k.detach().float(), dim=1)
        if negatives is not None:
            negatives = F.normalize(negatives.detach().float(), dim=1)
            logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ negatives.T], dim=1)
            labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        else:
            logits = q @ gather_no_grad(k).T
            labels = torch.arange(q.shape[0], device=q.device) + rank() * q.shape[0]
        return F.cross_entropy(logits / self.temperature, labels)


class CrossViewNCELoss(nn.Module):
    """Two views, each contrasted against the other's embeddings only (CMC, Tian et al. 2019,
    Eq. 2 and 5, with the batch's other images as the negatives instead of a memory bank):
    ``L = L(V1, V2) + L(V2, V1)``, ``L(V1, V2) = -mean_i log( exp(z1_i.z2_i / tau) /
    sum_j exp(z1_i.z2_j / tau) )`` over l2-normalised vectors, ``j`` over every worker's batch
    (gathered with gradient: both views are trained, neither is a target).

    Shapes: ``z1, z2`` (N, D), row i of each from the same image. Scalar.
    """

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature

    @in_fp32
    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        _check_pair(z1, z2)
        z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
        own = torch.arange(z1.shape[0], device=z1.device) + rank() * z1.shape[0]
        one_way = F.cross_entropy(z1 @ gather_with_grad(z2).T / self.temperature, own)
        other_way = F.cross_entropy(z2 @ gather_with_grad(z1).T / self.temperature, own)
        return one_way + other_way


class NegativeCosineLoss(nn.Module):
    """``D(p, z) = -cos(p, stopgrad(z))`` averaged over the batch (SimSiam, Chen & He 2021,
    Eq. 1 and 3). BYOL's ``2 - 2 cos(p, sg(z'))`` (Grill et al. 2020, Eq. 2) is ``2 + 2 D``.

    Shapes: ``p, z`` (N, D). Returns a scalar in [-1, 1]; no gradient reaches ``z`` unless
    ``stop_gradient=False`` (SimSiam's collapse ablation, Sec. 4.1).
    """

    def __init__(self, stop_gradient: bool = True) -> None:
        super().__init__()
        self.stop_gradient = stop_gradient

    @in_fp32
    def forward(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        _check_pair(p, z)
        z = z.detach() if self.stop_gradient else z
        return -F.cosine_similarity(p.float(), z.float(), dim=1).mean()


class MemoryNCELoss(nn.Module):
    """Noise-contrastive estimation against a memory bank (NPID, Wu et al. 2018, Eqs. 2-6; PIRL,
    Misra & van der Maaten 2020, Eq. 3 with the bank of Eq. 4).

    With unit vectors and ``P(i | v) = exp(v . m_i / tau) / Z``, each pair is classified as data
    or noise, noise being K negatives drawn uniformly from the n memories (``P_n = 1 / n``):
    ``h(i, v) = P(i | v) / (P(i | v) + K / n)``, and

        L = -log h(positive, v) - sum_k log(1 - h(negative_k, v)),

    averaged over the batch. Z is estimated once, from the first batch's negatives, as NPID
    does (``Z = n * mean_k exp(v . m_k / tau)``, averaged over workers), then held: it is a
    buffer, so a resumed run keeps it. PIRL's Eq. 3 writes h without Z; its code (VISSL's
    ``nce_loss_with_memory``) normalises as here. Computed in log space: ``h = sigmoid(log P -
    log(K / n))``."""

    def __init__(self, temperature: float, dataset_size: int) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature, self.dataset_size = temperature, dataset_size
        self.register_buffer("log_normaliser", torch.full((), float("nan")))

    @in_fp32
    def forward(self, v: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """``v`` (N, D), ``positives`` (N, D): each row's memory; ``negatives`` (K, D). Unit vectors."""
        _check_pair(v, positives)
        positive = (v * positives).sum(dim=1) / self.temperature  # (N,)
        negative = v @ negatives.T / self.temperature  # (N, K)
        if torch.isnan(self.log_normaliser):
            with torch.no_grad():
                estimate = all_reduce_mean(negative.exp().mean()) * self.dataset_size
                self.log_normaliser.fill_(float(estimate.log()))
        noise = math.log(negatives.shape[0] / self.dataset_size)  # log(K P_n) = log(K / n)
        offset = self.log_normaliser + noise
        return (F.softplus(offset - positive) + F.softplus(negative - offset).sum(dim=1)).mean()


class RebalancedColourLoss(nn.Module):
    """Zhang et al. 2016, Eq. 2-3: the multinomial cross-entropy between the predicted colour
    distribution Z^ (logits (N, Q, H, W)) and the soft-encoded true colour Z (N, Q, H, W), each
    pixel weighted by its true colour's rarity v(Z_hw) = w_q*, q* = argmax_q Z_hwq (``weights``
    (Q,), Eq. 4):

        L = - sum_{h,w} v(Z_hw) sum_q Z_hwq log Z^_hwq

    averaged here over the pixels and images rather than summed, so the loss's scale does not
    move with the resolution."""

    @in_fp32
    def forward(self, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        per_pixel = -(target * F.log_softmax(logits, dim=1)).sum(dim=1)  # (N, H, W)
        return (weights[target.argmax(dim=1)] * per_pixel).mean()


class MaskedPatchLoss(nn.Module):
    """He et al. 2022, Sec. 3 ("Reconstruction target"): the mean squared error between the
    predicted and the true pixels of each patch (N, L, P), averaged over the hidden patches only
    (``mask`` (N, L), True where hidden); with ``normalise``, each true patch first standardised
    by its own pixels' mean and variance, t' = (t - mean(t)) / sqrt(var(t) + 1e-6)."""

    def __init__(self, normalise: bool = True) -> None:
        super().__init__()
        self.normalise = normalise

    @in_fp32
    def forward(self, predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.normalise:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()  # the reference code's epsilon
        per_patch = (predicted - target).square().mean(dim=-1)
        hidden = mask.to(per_patch.dtype)
        return (per_patch * hidden).sum() / hidden.sum()


class MaskedTokenLoss(nn.Module):
    """Bao et al. 2022, Eq. 1: the log-likelihood of the right visual token at each masked
    position, max sum_{x in D} E_M [ sum_{i in M} log p_MIM(z_i | x^M) ]: the cross-entropy of
    the logits (N, L, K) against the tokens (N, L), averaged over the masked positions only
    (``mask`` (N, L), True where masked)."""

    @in_fp32
    def forward(self, logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits[mask], tokens[mask])


class ContrastivePredictionLoss(nn.Module):
    """CPC's InfoNCE (van den Oord et al. 2018, Eq. 4; Hénaff et al. 2020, Eq. 1-2): each
    prediction z^ (M, D) must score its own target z_+ above every other target of the batch
    (T, D: all patches of all images, other positions of its own image included),
    L = -log exp(s(z^, z_+)) / sum_z exp(s(z^, z)); ``positive`` (M,) indexes z_+.

    The papers' score is the dot product. With ``temperature`` it is the cosine divided by it,
    as in the later contrastive losses (SimCLR's NT-Xent): raw dot products of unnormalised
    patch vectors grew without bound under SGD at the pipelines' learning rates (the loss went
    from 38 to 260,000 in 3 steps); None keeps the dot product."""

    def __init__(self, temperature: float | None = 0.1) -> None:
        super().__init__()
        if temperature is not None:
            _check_temperature(temperature)
        self.temperature = temperature

    @in_fp32
    def forward(self, predictions: torch.Tensor, targets: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
        if self.temperature is None:
            return F.cross_entropy(predictions @ targets.T, positive)
        scores = F.normalize(predictions, dim=1) @ F.normalize(targets, dim=1).T
        return F.cross_entropy(scores / self.temperature, positive)


class PixelConsistencyLoss(nn.Module):
    """PixPro's pixel-to-propagation consistency (Xie et al. 2021, Eq. 5), one direction:
    -cos(y_i, x'_j) averaged over the positive pairs (i of the online view's propagated map
    ``y``, j of the other view's target map ``x'``, ``pairs`` from ``nn.dense_matching``).

    Shapes: ``y`` (N, D, h, w), ``target`` (N, D, h, w), ``pairs`` (N, h * w, h * w) bool.
    Returns a scalar; zero (with a gradient path) when no pair exists, as for views that do
    not overlap. No gradient reaches ``target``."""

    @in_fp32
    def forward(self, y: torch.Tensor, target: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        y = F.normalize(y.float().flatten(2), dim=1)
        target = F.normalize(target.detach().float().flatten(2), dim=1)
        cosine = torch.bmm(y.transpose(1, 2), target)  # (N, L, L)
        weight = pairs.float()
        return -(cosine * weight).sum() / weight.sum().clamp_min(1.0)
