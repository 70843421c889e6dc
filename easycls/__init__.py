"""easycls: train a good image classifier in one line (fastai + timm + Accelerate)."""

__version__ = "0.1.0"
