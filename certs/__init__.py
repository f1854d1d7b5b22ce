"""Webhook TLS: load and reload serving certificates (generation and rotation come later)."""
