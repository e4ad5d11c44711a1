"""Hostile and awkward request payloads, generated at test time (nothing big is committed)."""
