"""Hook module of ad-recon: registers its detectors with adcore by lazy "module:Class" strings."""

from __future__ import annotations

from adcore import hookimpl

__all__ = ["adcore_register_detectors"]

# a few-second smoke configuration at 64 px for the conformance kit (not a useful model)
_QUICK = {"input_size": 64, "epochs": 3, "batch_size": 8, "base_channels": 8, "depth": 4}


@hookimpl
def adcore_register_detectors(registry) -> None:
    """Register the six reconstruction detectors."""
    common = {"category": "reconstruction", "trains": True, "input_size": 256}
    registry.add(
        "vanilla_ae", "ad_recon.vanilla_ae:VanillaAE", **common,
        paper="Bergmann et al., Improving Unsupervised Defect Segmentation by Applying Structural Similarity "
              "to Autoencoders, VISAPP 2019",
        paradigm="convolutional autoencoder, per-pixel L2/SSIM reconstruction error", default_backbone=None,
        description="Convolutional autoencoder with a dense latent code (L2-AE / SSIM-AE)",
        quick_params={**_QUICK, "latent_dim": 16},
    )
    registry.add(
        "unet_ae", "ad_recon.unet_ae:UnetAE", **common,
        paper="Ronneberger et al., U-Net: Convolutional Networks for Biomedical Image Segmentation, MICCAI 2015",
        paradigm="U-Net autoencoder with coarse-only skips, per-pixel reconstruction error", default_backbone=None,
        description="U-Net autoencoder; skips only on the coarse levels (with dropout) so defects are not copied",
        quick_params={**_QUICK, "latent_channels": 16},
    )
    registry.add(
        "vae", "ad_recon.vae:VAE", **common,
        paper="Kingma & Welling, Auto-Encoding Variational Bayes, ICLR 2014",
        paradigm="variational autoencoder, reconstruction error of the posterior mean", default_backbone=None,
        description="Variational autoencoder (reparameterisation trick, KL to N(0, I))",
        quick_params={**_QUICK, "latent_dim": 16},
    )
    registry.add(
        "beta_vae", "ad_recon.beta_vae:BetaVAE", **common,
        paper="Higgins et al., beta-VAE: Learning Basic Visual Concepts with a Constrained Variational Framework, "
              "ICLR 2017",
        paradigm="beta-weighted variational autoencoder, reconstruction error", default_backbone=None,
        description="beta-VAE: VAE with KL weight beta > 1 (default 4)",
        quick_params={**_QUICK, "latent_dim": 16},
    )
    registry.add(
        "wae", "ad_recon.wae:WAE", **common,
        paper="Tolstikhin et al., Wasserstein Auto-Encoders, ICLR 2018",
        paradigm="Wasserstein autoencoder with MMD penalty (IMQ or RBF kernel), reconstruction error",
        default_backbone=None,
        description="Wasserstein autoencoder (WAE-MMD) with a deterministic encoder",
        quick_params={**_QUICK, "latent_dim": 16},
    )
    registry.add(
        "resnet_ae", "ad_recon.resnet_ae:ResNetAE", **common,
        paper="Pretrained-encoder autoencoder (cf. Shi et al., Unsupervised anomaly segmentation via deep feature "
              "reconstruction, Neurocomputing 2021)",
        paradigm="frozen or fine-tuned pretrained backbone encoder + trained decoder, reconstruction error",
        default_backbone="tf_efficientnet_lite0",
        description="Autoencoder decoding images from a pretrained backbone stage (EfficientNet-Lite0 offline)",
        quick_params={"input_size": 64, "epochs": 6, "batch_size": 8, "base_channels": 8, "latent_channels": 16,
                      "residual": False, "learning_rate": 3e-3},
    )
