"""Serving and operations: the tritonserver runtime from PyPI, serve, fetch, watchdog, /proc."""
