"""BEiT (Bao et al. 2022, "BEiT: BERT Pre-Training of Image Transformers",
https://arxiv.org/abs/2106.08254): about 40% of an image's patches masked in blocks
(Algorithm 1), their embeddings replaced by a learned mask token before the positions are
added, the whole grid through the ViT, and a softmax over a visual vocabulary predicting each
masked patch's token (Eq. 1).

The tokens: the paper's come from DALL-E's dVAE, which cannot be downloaded here; this run
fits its own tokenizer first, before epoch 1, on the same training images
(``nn.patch_tokenizer``: a k-means codebook over pixel patches; why k-means is said there),
checkpoints it with the model and logs it to the run's ``fitted/`` artifacts, which is what
the run's targets are; ``train.fitted_from`` gives a run an earlier run's tokenizer instead.
As the paper: blockwise masking of 40% of the patches with blocks of
at least 16 of 196 patches (scaled to the grid, ``nn.masking.scaled_min_block``) and aspect
ratios in [0.3, 1/0.3], the mask token, the loss on the masked positions only, a linear head
on the encoder's last tokens. Deviations: a vocabulary of 512 codes (the paper's 8,192 for
224 px ImageNet); no layer scale or relative position bias (the project's timm ViT);
the representation is the mean of the patch tokens (``model.vit_pool: mean``, the paper's
fine-tuning and linear probing pool the tokens too).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field
from torch import nn

from ssl_ray.methods.base import SSLMethod, vit_refusal
from ssl_ray.methods.params import MethodParams
from ssl_ray.methods.registry import register_method
from ssl_ray.nn.feature_maps import unit_pixels
from ssl_ray.nn.losses import MaskedTokenLoss
from ssl_ray.nn.masking import blockwise_masks, scaled_min_block
from ssl_ray.nn.patch_tokenizer import fit_codebook, tokenize
from ssl_ray.nn.vit_tokens import patch_embeddings, patchify, transformer, with_positions
from ssl_ray.views.recipe import ONE_VIEW, Batch


@register_method("beit")
class BEiT(SSLMethod):
    crops = ONE_VIEW
    fits_targets = True
    fitted_buffers = ("codebook", "code_counts")

    class Params(MethodParams):
        mask_ratio: float = Field(default=0.4, gt=0.0, lt=1.0)
        # The smallest block in patches; None: the paper's 16 of 196, scaled to the grid.
        min_block_patches: int | None = Field(default=None, ge=1)
        # The tokenizer: codes, the training images whose patches it is fitted to, k-means passes.
        vocabulary_size: int = Field(default=512, gt=1)
        tokenizer_images: int = Field(default=2000, gt=0)
        tokenizer_iterations: int = Field(default=20, gt=0)

    @classmethod
    def model_refusal(cls, params, model) -> str | None:
        return vit_refusal(cls.name, "predicts masked patches' tokens with a ViT", model)

    def __init__(self, params, encoder, feature_dim, recipe) -> None:
        super().__init__(params, encoder, feature_dim, recipe)
        embed = encoder[1].patch_embed
        self.patch = embed.patch_size[0]
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, feature_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)  # the reference code's init
        self.head = nn.Linear(feature_dim, params.vocabulary_size)
        self.criterion = MaskedTokenLoss()
        pixels_per_patch = self.patch * self.patch * embed.proj.in_channels
        # Checkpointed: a resume predicts the tokens it was trained on and does not fit again.
        self.register_buffer("codebook", torch.zeros(params.vocabulary_size, pixels_per_patch))
        # How many of the fit's patches each code took: the vocabulary's use.
        self.register_buffer("code_counts", torch.zeros(params.vocabulary_size))
        self.register_buffer("tokenizer_fitted_at_epoch", torch.tensor(-1, dtype=torch.long))

    def masks(self, n: int, h: int, w: int, device) -> torch.Tensor:
        """(N, h * w) blockwise masks, drawn from torch's generator (seeded runs repeat)."""
        minimum = self.params.min_block_patches or scaled_min_block(h * w)
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        return blockwise_masks(n, h, w, self.params.mask_ratio, minimum, seed).to(device)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Each patch's visual token (N, L) under the fitted codebook."""
        return tokenize(patchify(unit_pixels(images), self.patch), self.codebook)

    def encode_masked(
        self, images: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the encoder's patch tokens (N, L, D) with the masked patches' embeddings replaced by
        the mask token, the mask (N, L)); a fresh blockwise mask unless one is given."""
        patches = patch_embeddings(self.backbone, images)
        n, h, w, _ = patches.shape
        if mask is None:
            mask = self.masks(n, h, w, images.device)
        corrupted = torch.where(mask.view(n, h, w, 1), self.mask_token.to(patches.dtype), patches)
        return transformer(self.backbone, with_positions(self.backbone, corrupted))[:, 1:], mask

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        images = batch.views[0]
        encoded, mask = self.encode_masked(images)
        with torch.no_grad():
            targets = self.tokens(images)
        loss = self.criterion(self.head(encoded), targets, mask)
        return {"loss": loss, "embedding": encoded.mean(dim=1).detach()}

    def targets_due(self, epoch: int) -> bool:
        return int(self.tokenizer_fitted_at_epoch) < 0

    def target_sample_size(self) -> int:
        return self.params.tokenizer_images

    def target_features(self, images: torch.Tensor) -> torch.Tensor:
        return patchify(unit_pixels(images), self.patch)  # (N, L, P)

    def fit_targets(self, features: torch.Tensor, seed: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
        if features.shape[-1] != self.codebook.shape[1]:
            raise ValueError(
                f"the tokenizer's patches have {features.shape[-1]} values and its codes {self.codebook.shape[1]}: "
                "the training images' channels are not the encoder's (data.channels)"
            )
        patches = features.flatten(0, 1)
        codebook = fit_codebook(patches, self.params.vocabulary_size, self.params.tokenizer_iterations, seed)
        self.codebook.copy_(codebook.to(self.codebook.device))
        counts = torch.bincount(tokenize(patches, codebook), minlength=len(codebook)).float()
        self.code_counts.copy_(counts.to(self.code_counts.device))
        return None  # nothing per image: the codebook is the targets

    def adopt_targets(self, epoch: int, index: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor) -> dict:
        """Marks the tokenizer fitted (rank 0 holds the codebook; the loop broadcasts it).
        Returns the codes the fit's patches use and their perplexity (rank 0's)."""
        self.tokenizer_fitted_at_epoch.fill_(epoch)
        counts = self.code_counts
        share = counts / counts.sum().clamp_min(1)
        entropy = -(share[share > 0] * share[share > 0].log()).sum()
        return {"tokenizer_codes_used": float((counts > 0).sum()), "tokenizer_perplexity": float(entropy.exp())}
