"""fedmodel: federated, privacy-preserving model training on Flower with Opacus DP-SGD."""

__version__ = "0.1.0"
