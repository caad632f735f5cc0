"""udpio.compat: the Twisted compatibility layer (requires the ``udpio[twisted]`` extra)."""

try:
    import twisted  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without Twisted installed
    raise ImportError("udpio.compat needs Twisted: pip install 'udpio[twisted]'") from exc
