"""Fixtures for the recaption/embed/cluster/prepare tests: small synthetic images with clear groups,
a tiny random LLaVA, DINOv2, CLIP text model and SD-style VAE built from configs (no weights)."""
from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image, ImageDraw

from hddm_core.data.shards import Sample

GROUPS = {"red circle": ((220, 30, 30), "ellipse"), "blue square": ((30, 60, 220), "rectangle"),
          "green triangle": ((30, 170, 60), "polygon")}


def shape_image(group: str, variant: int, size: int = 48) -> Image.Image:
    colour, shape = GROUPS[group]
    rng = np.random.default_rng(variant)
    im = Image.new("RGB", (size, size), (250, 250, 245))
    d = ImageDraw.Draw(im)
    m = int(rng.integers(4, 12))
    box = (m, m, size - m - int(rng.integers(0, 6)), size - m)
    shade = tuple(int(np.clip(c + rng.integers(-25, 25), 0, 255)) for c in colour)
    if shape == "ellipse":
        d.ellipse(box, fill=shade)
    elif shape == "rectangle":
        d.rectangle(box, fill=shade)
    else:
        d.polygon([(size // 2, m), (m, size - m), (size - m, size - m)], fill=shade)
    return im


def shape_samples(per_group: int = 4, size: int = 48) -> list[Sample]:
    out = []
    for g_index, group in enumerate(GROUPS):
        for v in range(per_group):
            key = f"{g_index:02d}{v:04d}"
            out.append(Sample(key=key, image=shape_image(group, v, size), caption=f"a {group} number {v}",
                              meta={"group": group}))
    order = np.random.default_rng(0).permutation(len(out))  # groups interleaved, as in real shards
    return [out[i] for i in order]


def samples_hash(samples) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(s.key.encode() + s.caption.encode() + s.image.tobytes())
    return h.hexdigest()


class GroupEmbedder:
    """A deterministic stand-in embedder for cluster/prepare plumbing tests: the mean colour of the
    image plus a little per-image jitter (the real networks are tested in test_embed.py)."""

    dim = 8

    def describe(self) -> dict:
        return {"backend": "test-mean-colour", "model": "mean-colour (test stand-in)", "dim": self.dim}

    def preprocess(self, images):
        import torch

        return torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), np.float32).reshape(-1, 3).mean(0))
                            for im in images])

    def forward(self, pixels):
        import torch

        jitter = torch.sin(pixels.sum(1, keepdim=True) * torch.arange(1, 6)) * 0.5
        return torch.cat([pixels / 255.0 * 10, jitter], dim=1)


def tiny_llava(seed: int = 0):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    words = ["<unk>", "<pad>", "<s>", "</s>", "<image>", "USER:", "ASSISTANT:", "Describe", "this", "image", "in",
             "one", "sentence.", "a", "red", "dog", "blue", "cat", "circle", "square", "green"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", extra_special_tokens={"image_token": "<image>"})
    image_processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=28, patch_size=14, projection_dim=16),
        text_config=LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                pad_token_id=1, bos_token_id=2, eos_token_id=3),
        image_token_index=4, vision_feature_select_strategy="default", vision_feature_layer=-1, pad_token_id=1)
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config).eval(), processor


def tiny_dinov2(seed: int = 0):
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    model = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                     image_size=28, patch_size=14)).eval()
    processor = BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28},
                                  do_center_crop=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return model, processor


def tiny_clip_text(seed: int = 0):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    letters = list("abcdefghijklmnopqrstuvwxyz")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in letters:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    torch.manual_seed(seed)
    model = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                                         bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    return model, tokenizer


def tiny_vae(seed: int = 0):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                         latent_channels=4, norm_num_groups=8, sample_size=16).eval()
