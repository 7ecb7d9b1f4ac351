"""Token log-probabilities in OpenAI's two shapes: chat's ``content`` list and the legacy
completions' parallel arrays. One formatter per choice; it sees each ``Delta``'s tokens once."""

from __future__ import annotations

from collections.abc import Callable

from mlxd.engine.events import TokenLogprob

TokenText = Callable[[int], str]


def _entry(text: str, logprob: float) -> dict:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


class ChatLogprobs:
    def __init__(self, token_text: TokenText, _prefix_len: int = 0) -> None:
        self.token_text = token_text
        self.content: list[dict] = []

    def _entries(self, logprobs: tuple[TokenLogprob, ...]) -> list[dict]:
        return [
            {
                **_entry(self.token_text(lp.token), lp.logprob),
                "top_logprobs": [_entry(self.token_text(t), v) for t, v in lp.top],
            }
            for lp in logprobs
        ]

    def add(self, _text: str, logprobs: tuple[TokenLogprob, ...]) -> None:
        self.content.extend(self._entries(logprobs))

    def piece(self, _text: str, logprobs: tuple[TokenLogprob, ...]) -> dict:
        return {"content": self._entries(logprobs), "refusal": None}

    def whole(self) -> dict:
        return {"content": self.content, "refusal": None}


class TextLogprobs:
    def __init__(self, token_text: TokenText, prefix_len: int = 0) -> None:
        self.token_text = token_text
        self.offset = prefix_len  # text_offset counts from the start of the returned text
        self.arrays: dict[str, list] = {
            "tokens": [],
            "token_logprobs": [],
            "top_logprobs": [],
            "text_offset": [],
        }

    def _arrays(self, logprobs: tuple[TokenLogprob, ...]) -> dict[str, list]:
        out: dict[str, list] = {key: [] for key in self.arrays}
        for lp in logprobs:
            text = self.token_text(lp.token)
            out["tokens"].append(text)
            out["token_logprobs"].append(lp.logprob)
            out["top_logprobs"].append({self.token_text(t): v for t, v in lp.top})
            out["text_offset"].append(self.offset)
            self.offset += len(text)
        return out

    def add(self, _text: str, logprobs: tuple[TokenLogprob, ...]) -> None:
        for key, values in self._arrays(logprobs).items():
            self.arrays[key].extend(values)

    def piece(self, _text: str, logprobs: tuple[TokenLogprob, ...]) -> dict:
        return self._arrays(logprobs)

    def whole(self) -> dict:
        return self.arrays
