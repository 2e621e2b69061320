"""In-memory expert training items (latent, text tokens, mask) for the training benchmarks."""
import torch


class SyntheticExpertData(torch.utils.data.Dataset):
    def __init__(self, n, c, s, length, width):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, c, s, s, generator=g)
        self.tok = torch.randn(n, length, width, generator=g)
        self.mask = torch.ones(n, length, dtype=torch.bool)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.tok[i], self.mask[i]
