"""`ConversionReport`: what a conversion read and wrote (printed, and saved as conversion.json)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class ConversionReport:
    """What was read and written."""

    source: list[str]
    destination: str
    layout: str
    model_parallel: int
    architecture: dict
    parameters: int
    dtype: str
    files: list[str]
    notes: list[str] = field(default_factory=list)
    data_parallel_shards: int = 1  # FSDP-sharded checkpoints: files per model part
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)
