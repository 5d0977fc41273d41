"""ad-recon: reconstruction autoencoders (VanillaAE, UnetAE, VAE, beta-VAE, WAE, ResNet-AE), registered with adcore through the ``adcore`` entry point."""

__version__ = "0.1.0"

__all__ = ["__version__"]
