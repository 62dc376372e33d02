"""nightlab: a harness-driven autoresearch loop."""

__version__ = "0.1.0"
