"""Ingest: durable storage of received instances, rules, loop prevention, study assembly."""
