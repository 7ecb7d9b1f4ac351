"""mlxd: serve one MLX language model over an OpenAI-compatible HTTP API."""

import time

__version__ = "0.1.0"
# When this process began, near enough (the first import of mlxd), on the monotonic clock: the
# start-up summary counts from here, imports of mlx and mlx-lm included.
STARTED = time.monotonic()
