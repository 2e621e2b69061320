"""Self-describing checkpoints: the expert/router manifest schema, pickle refusal, safetensors I/O, DiT import."""
