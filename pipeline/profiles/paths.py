"""Where the shipped profiles live."""

from __future__ import annotations

from pathlib import Path

PROFILES_DIR = Path(__file__).resolve().parent.parent.parent / "profiles"
"""The shipped profiles (``profiles/`` beside ``pipeline/`` in the checkout)."""
