"""Latent spaces the experts train in (pluggable); the choice is recorded in every manifest.

- `PixelSpace`: no autoencoder; images centre-cropped, resized to `resolution` and scaled to
  [-1, 1]; latent [3, R, R], scale 1. The offline default (no registry package carries a VAE).
- `SDVaeLatents`: Stable Diffusion's VAE through diffusers' AutoencoderKL (stabilityai/sd-vae-ft-mse
  or a local path) at scale: latent [4, R/8, R/8] = posterior mean * 0.18215 (the SD latent scale),
  and the posterior std (also scaled) is stored so trainers may sample z = mean + std * eps.
"""
from __future__ import annotations

import numpy as np

SD_VAE_SCALE = 0.18215  # Rombach et al. 2022: makes SD-VAE latents roughly unit variance
_DTYPES = ("float32", "float16", "bfloat16")


def images_to_tensor(images: list, resolution: int):
    """[N, 3, R, R] float32 in [-1, 1]: centre square crop, bicubic resize."""
    import torch
    from PIL import Image

    arrays = []
    for im in images:
        im = im.convert("RGB")
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.BICUBIC)
        arrays.append(np.asarray(im, dtype=np.uint8))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().contiguous()
    return x / 127.5 - 1.0


def _check_resolution(resolution: int, multiple: int = 1) -> int:
    if int(resolution) < 1 or int(resolution) % multiple:
        raise ValueError(f"resolution must be a positive multiple of {multiple}, got {resolution!r}")
    return int(resolution)


class PixelSpace:
    def __init__(self, resolution: int = 32):
        self.resolution = _check_resolution(resolution)
        self.scale = 1.0
        self.latent_shape = [3, self.resolution, self.resolution]

    def describe(self) -> dict:
        return {"space": "pixel", "model": None, "scale": self.scale, "resolution": self.resolution,
                "latent_shape": self.latent_shape, "has_std": False}

    def encode(self, images: list) -> dict:
        return {"mean": images_to_tensor(images, self.resolution)}  # [N, 3, R, R]


class SDVaeLatents:
    def __init__(self, vae, *, source: str, resolution: int = 256, scale: float = SD_VAE_SCALE,
                 device: str | None = None, dtype: str = "float32"):
        import torch

        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.resolution = _check_resolution(resolution, self.factor)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype
        self.vae = vae.to(self.device).eval()
        if dtype != "float32":
            self.vae = self.vae.to(getattr(torch, dtype))
        self.source, self.scale = source, float(scale)
        side = self.resolution // self.factor
        self.latent_shape = [int(vae.config.latent_channels), side, side]

    @classmethod
    def from_pretrained(cls, model_id_or_path: str = "stabilityai/sd-vae-ft-mse", **kwargs) -> "SDVaeLatents":
        from diffusers import AutoencoderKL

        return cls(AutoencoderKL.from_pretrained(model_id_or_path), source=model_id_or_path, **kwargs)

    def describe(self) -> dict:
        return {"space": "sd-vae", "model": self.source, "scale": self.scale, "resolution": self.resolution,
                "latent_shape": self.latent_shape, "has_std": True}

    def encode(self, images: list) -> dict:
        import torch

        x = images_to_tensor(images, self.resolution).to(self.device, getattr(torch, self.dtype))
        with torch.inference_mode():
            posterior = self.vae.encode(x).latent_dist  # diagonal Gaussian over [N, 4, R/8, R/8]
        return {"mean": posterior.mean.float().cpu() * self.scale, "std": posterior.std.float().cpu() * self.scale}
