"""The node's HTTP server: STOW-RS, admin API and pages, health, metrics."""
