"""Reusable widgets of the gemma-tui screens."""
