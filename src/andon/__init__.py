"""andon: one eBPF agent for runtime security, observability and network policy."""

__version__ = "0.1.0"
