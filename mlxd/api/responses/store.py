"""Stored responses (``store: true``): in memory, bounded by bytes, least recently used out.

A stored response keeps its response object and its context: every input item it was generated
from (the items of the responses before it, when it continued one, then its own input). So
``previous_response_id`` needs only the one response it names, which stays whole until evicted.
Each entry counts the JSON size of both, so the limit bounds what the store holds (items shared
by a conversation's responses are counted in each of them: the bound errs on the safe side).

Only the event loop touches the store: no lock.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass

from mlxd.transport.errors import NOT_FOUND, HttpError

EVICTED_IDS_KEPT = 4096  # ids remembered after eviction, to say "evicted" rather than "unknown"


@dataclass(frozen=True)
class Stored:
    response: dict  # the response object, as GET /v1/responses/{id} returns it
    context: tuple[dict, ...]  # the input items, oldest first
    nbytes: int

    @classmethod
    def of(cls, response: dict, context: tuple[dict, ...]) -> Stored:
        size = len(json.dumps(response, ensure_ascii=False)) + len(
            json.dumps(context, ensure_ascii=False)
        )
        return cls(response, context, size)


class ResponseStore:
    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.nbytes = 0
        self._entries: OrderedDict[str, Stored] = OrderedDict()
        self._gone: OrderedDict[str, str] = OrderedDict()  # id -> why it is no longer here

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, stored: Stored) -> bool:
        """Keep ``stored``, evicting the least recently used until it fits; False when it is
        larger than the whole store (it is not kept)."""
        rid = stored.response["id"]
        if stored.nbytes > self.limit_bytes:
            self._forget(rid, "was larger than the whole response store (--responses-store-bytes)")
            return False
        self._drop(rid)
        while self.nbytes + stored.nbytes > self.limit_bytes:
            old_id, _ = next(iter(self._entries.items()))
            self._drop(old_id)
            self._forget(old_id, "was evicted from the response store (--responses-store-bytes)")
        self._entries[rid] = stored
        self.nbytes += stored.nbytes
        self._gone.pop(rid, None)
        return True

    def get(self, rid: str, param: str | None = None) -> Stored:
        """The stored response (now the most recently used), or a 404 that says why not."""
        stored = self._entries.get(rid)
        if stored is None:
            raise self._not_found(rid, param)
        self._entries.move_to_end(rid)
        return stored

    def delete(self, rid: str) -> None:
        if rid not in self._entries:
            raise self._not_found(rid, None)
        self._drop(rid)
        self._forget(rid, "was deleted")

    # ----- internals -----

    def _drop(self, rid: str) -> None:
        stored = self._entries.pop(rid, None)
        if stored is not None:
            self.nbytes -= stored.nbytes

    def _forget(self, rid: str, why: str) -> None:
        self._gone[rid] = why
        self._gone.move_to_end(rid)
        while len(self._gone) > EVICTED_IDS_KEPT:
            self._gone.popitem(last=False)

    def _not_found(self, rid: str, param: str | None) -> HttpError:
        why = self._gone.get(rid)
        detail = (
            f"it {why}"
            if why
            else "it was never stored here (store: false), or it left the store long ago"
        )
        return HttpError(
            404,
            NOT_FOUND,
            f"Response with id '{rid}' not found: {detail}.",
            param=param,
            code="response_not_found",
        )
