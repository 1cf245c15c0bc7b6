"""Networks only: one readable file per architecture (pure PyTorch + einops; CLIP through transformers)."""
