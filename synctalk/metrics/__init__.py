"""Evaluation metrics and losses: PSNR/SSIM (image.py), mouth LMD (lmd.py), perceptual scores
(perceptual.py: the offline `perceptual_hedvgg` score and the real LPIPS-alex when weights exist).

See docs/metrics.md for exact definitions and how they relate to the numbers the original reports.
"""

from synctalk.metrics.image import psnr, ssim, to_image_batch

__all__ = ["psnr", "ssim", "to_image_batch"]
