"""opskit: post-launch operations as code (README.md; the layers: docs/architecture.md)."""

__version__ = "0.2.0"
