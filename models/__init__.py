"""Pure PyTorch model code: one file per architecture, plus Hub loading and samplers."""
