"""Shared pytest setup: the collection guard (see tests/_collection_guard.py) and pytester."""

pytest_plugins = ["tests._collection_guard", "pytester"]
