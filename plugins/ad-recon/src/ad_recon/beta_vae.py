"""β-VAE: a VAE whose KL term is weighted by β > 1 for a more disentangled, more compressed code.

Paper: I. Higgins, L. Matthey, A. Pal, C. Burgess, X. Glorot, M. Botvinick, S. Mohamed,
A. Lerchner, "β-VAE: Learning Basic Visual Concepts with a Constrained Variational Framework",
ICLR 2017. Same model as :class:`ad_recon.vae.VAE`; the objective is reconstruction + β·KL with
β > 1 (default 4, a value the paper uses for its image data sets). For anomaly detection the
stronger bottleneck means the decoder has less room to reproduce what it never saw; it also blurs
reconstructions, so a larger β trades sharpness for that.

Deviations: those of :mod:`ad_recon.vae` (calibrated Gaussian decoder by default, mean
reconstruction at test time, conv network). The paper's β is normalised against latent and input
size (β_norm); here β multiplies the KL of the summed-over-pixels ELBO directly, as in the paper's unnormalised
form.
"""

from __future__ import annotations

import math
import numbers

from ad_recon.vae import VAE
from adcore.params import Check

__all__ = ["BetaVAE"]


def _above_one(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value)) \
        and 1.0 < float(value) <= 1e4


class BetaVAE(VAE):
    """β-VAE (Higgins et al. 2017): :class:`~ad_recon.vae.VAE` with ``beta > 1`` (default 4)."""

    progress_name = "beta_vae"
    # beta = 1 is the plain VAE; beta-VAE is defined by a stronger KL pressure
    parameter_constraints = {"beta": [Check(_above_one, "a finite number in (1, 10000] (beta = 1 is the plain 'vae')")]}

    def __init__(self, *, input_size: int = 256, latent_dim: int = 100, beta: float = 4.0,
                 decoder: str = "calibrated", base_channels: int = 32, depth: int = 5, residual: bool = False,
                 error: str = "l2", epochs: int = 50, batch_size: int = 16,
                 learning_rate: float = 1e-3, weight_decay: float = 1e-5, validation_fraction: float = 0.0,
                 patience: int = 5, augment: bool = False, sigma: float = 4.0, image_score: str = "topk",
                 topk_fraction: float = 0.01, seed: int = 0) -> None:
        super().__init__(input_size=input_size, latent_dim=latent_dim, beta=beta, decoder=decoder,
                         base_channels=base_channels,
                         depth=depth, residual=residual, error=error, epochs=epochs, batch_size=batch_size,
                         learning_rate=learning_rate, weight_decay=weight_decay,
                         validation_fraction=validation_fraction, patience=patience, augment=augment, sigma=sigma,
                         image_score=image_score, topk_fraction=topk_fraction, seed=seed)
