"""LoRA adapters for fine-tuning's users: the names `helpers.loading.adapters` owns (load_model applies them too)."""

from __future__ import annotations

from ..loading.adapters import (
    AdapterInfo,
    apply_adapter,
    base_model_for,
    check_adapter,
    find_adapters,
    is_adapter,
    merge_adapter,
    read_adapter,
)

__all__ = ["AdapterInfo", "apply_adapter", "base_model_for", "check_adapter", "find_adapters", "is_adapter",
           "merge_adapter", "read_adapter"]
