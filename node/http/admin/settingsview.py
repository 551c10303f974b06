"""Effective settings for the admin API (the same view as ``spinexr-node config check``)."""

from spinexr.node.settings import effective_settings

__all__ = ["effective_settings"]
