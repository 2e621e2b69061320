"""Latent spaces the experts train in (pluggable); the choice is recorded in every manifest.

- `PixelSpace`: no autoencoder; images centre-cropped, resized to `resolution` and scaled to
  [-1, 1]; latent [3, R, R], scale 1. The offline default (no registry package carries a VAE).
- `SDVaeLatents`: Stable Diffusion's VAE through diffusers' AutoencoderKL (stabilityai/sd-vae-ft-mse
  or a local path) at scale: latent [4, R/8, R/8] = posterior mean * 0.18215 (the SD latent scale),
  and the posterior std (also scaled) is stored so trainers may sample z = mean + std * eps.

Back to pixels: `latent_decoder(latent)` turns the latent description a prepare manifest records
(`describe()`: space, model, scale, ...) into a decoder; `decode(latents)` returns images in
[-1, 1], in batches, on the decoder's device. SD-VAE latents are divided by the recorded scale
before AutoencoderKL.decode. A VAE that cannot be loaded is one line naming the manifest field and
the path tried.
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

    def decode(self, latents, batch_size: int = 64, progress: bool = False):
        """Pixel 'latents' are the images: [N, 3, R, R] clamped to [-1, 1] (on CPU)."""
        return _check_latents(latents, self.latent_shape).float().cpu().clamp(-1, 1)


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

    def decode(self, latents, batch_size: int = 16, progress: bool = False):
        """Scaled latents [N, C, h, w] -> images [N, 3, R, R] in [-1, 1] (on CPU), decoded in batches on
        self.device: x = AutoencoderKL.decode(z / scale)."""
        import torch
        from tqdm.auto import tqdm

        z = _check_latents(latents, self.latent_shape)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        out = []
        dtype = getattr(torch, self.dtype)
        with torch.inference_mode():
            for i in tqdm(range(0, z.shape[0], batch_size), desc="decode (VAE)", disable=not progress, leave=False):
                zb = z[i:i + batch_size].to(self.device, dtype) / self.scale
                out.append(self.vae.decode(zb).sample.float().cpu().clamp(-1, 1))  # [b, 3, R, R]
        return torch.cat(out) if out else torch.zeros(0, 3, self.resolution, self.resolution)


def _check_latents(latents, shape: list):
    import torch

    z = torch.as_tensor(latents)
    if z.dim() != 4 or list(z.shape[1:]) != list(shape):
        raise ValueError(f"latents must be [N, {', '.join(map(str, shape))}] for this latent space, got {tuple(z.shape)}")
    return z


def latent_decoder(latent: dict, *, device: str = "cpu", vae_model: str | None = None,
                   field: str = "latent.model"):
    """The decoder for a recorded latent space (a prepare manifest's `latent`, i.e. describe()).

    vae_model: load the VAE from here instead of the recorded id/folder (a local copy of the same
    weights). Raises ValueError naming `field` and the path tried when the VAE cannot be loaded, and
    when the loaded VAE does not give the recorded latent shape."""
    space = latent.get("space")
    if space == "pixel":
        return PixelSpace(int(latent["resolution"]))
    if space != "sd-vae":
        raise ValueError(f"unknown latent space {space!r} in the manifest; valid: 'pixel', 'sd-vae'")
    path = vae_model or latent.get("model")
    if not path:
        raise ValueError(f"{field} is empty: the manifest does not say which VAE encoded these latents "
                         "(pass vae_model)")
    try:
        decoder = SDVaeLatents.from_pretrained(path, resolution=int(latent["resolution"]),
                                               scale=float(latent["scale"]), device=device)
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes the one line the user needs
        why = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ValueError(f"cannot load the VAE of {field} = {latent.get('model')!r} (tried {path!r}): {why}") from None
    if list(decoder.latent_shape) != list(latent["latent_shape"]):
        raise ValueError(f"the VAE at {path!r} gives latents {decoder.latent_shape}, but {field}'s run recorded "
                         f"{list(latent['latent_shape'])}: not the VAE that encoded these latents")
    return decoder
