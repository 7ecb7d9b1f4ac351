"""A tokenizer's vocabulary as bytes, indexed for constrained decoding; built once per tokenizer.

- ``pieces``: token id -> the bytes it adds to the text. Byte-level BPE (GPT-2, SmolLM2, llama 3,
  Qwen): GPT-2's byte alphabet undone. SentencePiece: ``▁`` is a space, ``<0xNN>`` one byte.
  Special tokens (eos, chat markers) -> ``None``: a grammar never allows them; eos is added back
  by the constraint once the text is complete.
- ``index``: the distinct pieces in sorted order -- an implicit trie (the tokens sharing a prefix
  are one contiguous range), walked with ``bisect`` so a refused first byte prunes its whole range.
- ``leaf_table``: for a state of a leaf machine (inside a string, a number), which tokens stay
  inside it and which leave it after k bytes. One numpy pass over the whole vocabulary per state,
  on first use, shared by every grammar and request: inside a string almost every token is
  allowed, and walking 49k tokens in Python there would cost most of a second.
"""

from __future__ import annotations

import functools
import json
import logging
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from mlxd.constrain.grammar import Machine

log = logging.getLogger(__name__)

_vocabularies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class PieceIndex:
    """Distinct byte strings, sorted, each with the token ids that spell it."""

    def __init__(self, groups: dict[bytes, list[int]]) -> None:
        self.keys = sorted(groups)
        self.ids = [groups[k] for k in self.keys]

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class LeafTable:
    """Tokens from one leaf-machine state: those that end inside the leaf, by the leaf state
    they end in, and those that finish the leaf part-way (``exits``, keyed by what is left)."""

    inside: list[tuple[int, np.ndarray]]
    inside_mask: np.ndarray
    exits: PieceIndex | None


class TokenVocabulary:
    def __init__(self, pieces: list[bytes | None]) -> None:
        self.pieces = pieces
        self.size = len(pieces)
        groups: dict[bytes, list[int]] = {}
        for i, p in enumerate(pieces):
            if p:  # an empty piece would let the model stall without moving the grammar
                groups.setdefault(p, []).append(i)
        self.index = PieceIndex(groups)
        self.single_bytes = frozenset(p[0] for p in groups if len(p) == 1)
        missing = set(range(0x20, 0x7F)) - self.single_bytes
        if missing:
            log.warning(
                "no single-byte token for %r: a constraint may be unable to finish",
                bytes(sorted(missing)),
            )
        self._matrix: tuple[np.ndarray, np.ndarray, list[int]] | None = None
        self._leaves: dict[tuple[str | None, int], LeafTable] = {}
        self.grammar_indexes: OrderedDict = OrderedDict()  # constrain.GrammarIndex, LRU

    @classmethod
    def for_tokenizer(cls, tokenizer) -> TokenVocabulary:
        """The vocabulary of an mlx-lm ``TokenizerWrapper`` (or HF tokenizer), cached per object."""
        try:
            return _vocabularies[tokenizer]
        except KeyError:
            pass
        except TypeError:  # not weak-referenceable: build, don't cache
            return cls(token_pieces(tokenizer))
        vocab = _vocabularies[tokenizer] = cls(token_pieces(tokenizer))
        return vocab

    def leaf_table(self, machine: Machine, state: int) -> LeafTable:
        key = (machine.leaf, state)
        table = self._leaves.get(key)
        if table is None:
            table = self._leaves[key] = self._run_leaf(machine, state)
        return table

    def _tokens_matrix(self):
        """Token ids with a piece, longest first; their bytes zero-padded into one matrix."""
        if self._matrix is None:
            ids = np.array([i for i, p in enumerate(self.pieces) if p], dtype=np.int64)
            lens = np.array([len(self.pieces[i]) for i in ids], dtype=np.int64)
            order = np.argsort(-lens, kind="stable")
            ids, lens = ids[order], lens[order]
            flat = np.frombuffer(b"".join(self.pieces[i] for i in ids), dtype=np.uint8)
            matrix = np.zeros((len(ids), int(lens.max())), dtype=np.uint8)
            rows = np.repeat(np.arange(len(ids)), lens)
            starts = np.repeat(np.cumsum(lens) - lens, lens)
            matrix[rows, np.arange(len(flat)) - starts] = flat
            longer = [int(np.count_nonzero(lens > i)) for i in range(matrix.shape[1])]
            self._matrix = ids, matrix, longer
        return self._matrix

    def _run_leaf(self, machine: Machine, start: int) -> LeafTable:
        """Run the leaf's DFA over every token at once, from ``start``."""
        ids, matrix, longer = self._tokens_matrix()
        dead = len(machine.final)
        table = np.full((dead + 1, 256), dead, dtype=np.int32)
        for src, edges in enumerate(machine.edges):
            for b, t in edges.items():
                table[src, b] = t
        final = np.array(machine.final + [False])
        state = np.full(len(ids), start, dtype=np.int32)
        alive = np.ones(len(ids), dtype=bool)
        exits: dict[bytes, list[int]] = {}
        for i, n in enumerate(longer):  # rows [0, n) still have a byte at position i
            if n == 0 or not alive[:n].any():
                break
            s, a = state[:n], alive[:n]
            if i > 0:
                for row in np.flatnonzero(a & final[s]):  # the leaf may end before byte i
                    exits.setdefault(self.pieces[ids[row]][i:], []).append(int(ids[row]))
            nxt = table[s, matrix[:n, i]]
            state[:n] = nxt
            alive[:n] = a & (nxt != dead)
        inside_mask = np.zeros(self.size, dtype=bool)
        inside_mask[ids[alive]] = True
        ends = state[alive]
        inside = [(int(end), ids[alive][ends == end]) for end in np.unique(ends)]
        return LeafTable(inside, inside_mask, PieceIndex(exits) if exits else None)


def token_pieces(tokenizer) -> list[bytes | None]:
    """Token id -> bytes it adds to the detokenized text; ``None`` for special tokens."""
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    n = len(hf)
    names = hf.convert_ids_to_tokens(list(range(n)))
    special = set(hf.all_special_ids)
    added = getattr(hf, "added_tokens_decoder", {}) or {}
    kind = _decoder_kind(hf)
    if kind == "other":
        log.warning("unknown tokenizer decoder: spelling tokens one by one (slower, approximate)")
    pieces: list[bytes | None] = []
    for i, name in enumerate(names):
        if i in special or name is None:
            pieces.append(None)
        elif i in added:
            pieces.append(None if added[i].special else added[i].content.encode())
        elif kind == "bytelevel":
            pieces.append(_byte_level(name))
        elif kind == "spm":
            pieces.append(_sentencepiece(name))
        else:
            text = hf.decode([i])
            pieces.append(None if "\ufffd" in text else text.encode())
    return pieces


def _decoder_kind(hf) -> str:
    decoder = getattr(getattr(hf, "backend_tokenizer", None), "decoder", None)
    if decoder is None:
        return "other"
    desc = json.loads(decoder.__getstate__())
    kinds = {desc.get("type")} | {d.get("type") for d in desc.get("decoders", [])}
    if "ByteLevel" in kinds:
        return "bytelevel"
    if kinds & {"ByteFallback", "Metaspace"}:
        return "spm"
    return "other"


@functools.lru_cache(maxsize=1)
def _gpt2_bytes() -> dict[str, int]:
    """GPT-2's printable stand-in for each byte (its encoder.py's bytes_to_unicode), inverted."""
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    moved = [b for b in range(256) if b not in keep]
    table = {chr(b): b for b in keep}
    table.update({chr(256 + n): b for n, b in enumerate(moved)})
    return table


def _byte_level(name: str) -> bytes | None:
    table = _gpt2_bytes()
    try:
        return bytes(table[c] for c in name)
    except KeyError:
        return None


def _sentencepiece(name: str) -> bytes:
    if len(name) == 6 and name.startswith("<0x") and name.endswith(">"):
        return bytes([int(name[3:5], 16)])
    return name.replace("\u2581", " ").encode()
