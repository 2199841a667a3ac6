"""`pacos serve`: an OpenAI-compatible HTTP API over the pacos engine and its continuous batching."""

from pacos.serve.app import create_app

__all__ = ["create_app"]
