"""Helpers for test FineTuneJob documents shared by several test folders."""

from __future__ import annotations

import copy


def merge(base: dict, override: dict) -> dict:
    """`base` with `override` merged in, nested mappings key by key (neither input changes)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
