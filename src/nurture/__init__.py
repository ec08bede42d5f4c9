"""Nurture: self-hosted lifecycle marketing automation."""

__version__ = "0.1.0"
