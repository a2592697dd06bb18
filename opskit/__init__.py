"""opskit: post-launch operations as code (see README.md and ../shared/DESIGN.md)."""

__version__ = "0.1.0"
