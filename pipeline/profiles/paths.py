"""Where the shipped profiles live."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
_CHECKOUT = _HERE.parent.parent / "profiles"
_INSTALLED = _HERE / "shipped"  # where the wheel puts the top-level profiles/ folder

PROFILES_DIR = _CHECKOUT if _CHECKOUT.is_dir() else _INSTALLED
"""The shipped profiles: ``profiles/`` beside ``pipeline/`` in a checkout, or the copy the
wheel carries inside the package when installed."""
