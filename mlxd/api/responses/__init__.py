"""OpenAI's Responses API on mlxd's engine: request records, items, output, store, routes."""
