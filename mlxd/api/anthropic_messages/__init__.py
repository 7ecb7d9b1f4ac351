"""Anthropic's Messages API (``POST /v1/messages``, ``/v1/messages/count_tokens``) on the chat path.

A Messages body becomes the same ``ChatRequest`` record a chat body parses into (request.py,
blocks.py), so that it goes through the chat plan, the template, the tool-call and thinking split
and the constrained decoder unchanged, inside the same batch; the chat reply's deltas then become
Anthropic content blocks and stream events (message.py). Errors on these routes take Anthropic's
shape (errors.py). The package is not named ``anthropic``: that would shadow the SDK.
"""
