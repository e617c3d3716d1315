"""spair: Spatially Invariant Attend, Infer, Repeat (Crawford & Pineau, AAAI 2019) in PyTorch.

Unsupervised object detection: a VAE whose encoder is a convolutional, YOLO-like detector over a
grid of cells, trained only to reconstruct its input. See README.md and docs/.
"""

__version__ = "0.1.0"
