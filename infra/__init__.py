"""Shared plumbing: settings, the Redis connection and key names, the embedded Redis, logs, the HTTP server."""

from importlib.metadata import version

VERSION = version("storyflow")  # one place: pyproject.toml
