"""Faust agents: thin shells that decode, call domain functions, and send. Importing this package registers them."""

from agents import aggregator, uploader  # noqa: F401
