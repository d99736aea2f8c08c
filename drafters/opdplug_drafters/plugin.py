"""Hook implementations of ``opdplug-drafters`` (filled in as the parts land)."""
from __future__ import annotations
