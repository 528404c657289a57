"""Exports: Hugging Face checkpoints (and later TFLite / LiteRT-LM bundles)."""
