"""Numbers for people: bytes as '1.5 GiB', parameter counts as '125.2M'."""


def human_bytes(n: float) -> str:
    """'1.5 GiB' style."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


GiB = 1024**3


def human_count(n: int) -> str:
    """'125.2M' / '6.66B' style parameter counts."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"
