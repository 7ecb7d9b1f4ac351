"""mlxd: serve one MLX language model over an OpenAI-compatible HTTP API."""

__version__ = "0.1.0"
