"""Who may call, and from which web origins: API keys, CORS, the JSON media type.

Pure functions of a request head and the settings; server.py applies them before a handler runs
(and before a 100-continue, so a refused body is never read).
"""

from __future__ import annotations

import hmac

from mlxd.transport import h1
from mlxd.transport.errors import AUTHENTICATION, HttpError

CORS_MAX_AGE_S = "600"
CORS_ALLOW_HEADERS = (
    "Authorization, Content-Type, X-Request-Id, OpenAI-Organization, OpenAI-Project, "
    "X-Api-Key, Anthropic-Version, Anthropic-Beta, Anthropic-Dangerous-Direct-Browser-Access"
)


def auth_error(head: h1.Head, api_keys: tuple[str, ...]) -> HttpError | None:
    """The 401 for a request without a valid key, or None. The key comes as OpenAI's clients
    send it (``Authorization: Bearer <key>``) or as Anthropic's (``x-api-key: <key>``); Bearer
    wins when both are there."""
    if not api_keys or head.method == "OPTIONS":  # preflights carry no credentials (Fetch)
        return None
    bearer = head.header("authorization")
    given = bearer if bearer is not None else head.header("x-api-key")
    token: str | None = given
    if bearer is not None:
        scheme, _, rest = bearer.partition(" ")
        token = rest if scheme.lower() == "bearer" else None
    token_bytes = (token or "").strip().encode()
    # Compare against every key, always: the time taken says nothing about which matched.
    ok = (
        token is not None
        and sum(hmac.compare_digest(token_bytes, key.encode()) for key in api_keys) > 0
    )
    if ok:
        return None
    return HttpError(
        401,
        AUTHENTICATION,
        "a valid API key is required: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
        if not given
        else "Incorrect API key provided",
        code="invalid_api_key",
        headers=(("WWW-Authenticate", 'Bearer realm="mlxd"'),),
    )


def cors_headers(head: h1.Head, allowed: tuple[str, ...]) -> list[tuple[str, str]]:
    """Response headers for a request from a web page; none unless its Origin is allowed."""
    origin = head.header("origin")
    if not origin or not allowed:
        return []
    if "*" in allowed:
        # Never with credentials: "*" stays "*", it is not the caller's Origin reflected.
        out = [("Access-Control-Allow-Origin", "*")]
    elif origin in allowed:
        out = [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
    else:
        out = []
    return out + [("Access-Control-Expose-Headers", "X-Request-Id")]


def preflight_headers(methods: list[str]) -> list[tuple[str, str]]:
    return [
        ("Access-Control-Allow-Methods", ", ".join(methods)),
        ("Access-Control-Allow-Headers", CORS_ALLOW_HEADERS),
        ("Access-Control-Max-Age", CORS_MAX_AGE_S),
    ]


def content_type_error(head: h1.Head) -> HttpError | None:
    """Bodies are JSON; an absent Content-Type is taken as JSON, another type is refused."""
    if head.method not in ("POST", "PUT", "PATCH"):
        return None
    given = head.header("content-type")
    if given is None:
        return None
    media, _, params = given.partition(";")
    charset = next(
        (
            v.strip().strip('"').lower()
            for k, _, v in (p.partition("=") for p in params.split(";"))
            if k.strip().lower() == "charset"
        ),
        "utf-8",
    )
    if media.strip().lower() != "application/json" or charset not in ("utf-8", "utf8"):
        return HttpError(
            415,
            "invalid_request_error",
            f"Content-Type must be application/json (UTF-8), not {given!r}",
            code="unsupported_media_type",
        )
    return None
