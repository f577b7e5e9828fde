"""Backbones (timm, embedded EfficientNet-Lite weights) and the model bundle."""
