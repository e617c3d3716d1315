"""Figures: boxes drawn on images, reconstructions, glimpses, training curves."""
