"""SentencePiece vocabularies (``tokenizer.ggml.model = "llama"``: Llama 2, Mistral 7B, Phi-3,
Gemma) rebuilt as a ``tokenizers`` BPE with byte fallback, as llama.cpp runs them.

llama.cpp's SPM tokenizer merges the adjacent pair whose union has the best score, and spells
bytes missing from the vocabulary as ``<0xNN>`` tokens. A BPE whose merges are ranked by the
score of the piece they make, with ``byte_fallback``, does the same (transformers builds its
GGUF tokenizers this way, ``generate_merges``; the tests check it against SentencePiece itself
on a model trained there). Spaces become ``▁``; with
``tokenizer.ggml.add_space_prefix`` (the default) one is put before every run of text, also after
a special token, as llama.cpp does. Gemma's files need two fixes transformers makes too: their
scores do not follow the merge order (the token order does), and their tokens of several spaces
are spelled with real spaces.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, normalizers

SPACE = "\u2581"  # SentencePiece's visible space
GEMMA_ARCHITECTURES = {"gemma", "gemma2", "gemma3"}


def merges_from_scores(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """Every split of a piece into two pieces of the vocabulary, best-scored piece first."""
    ranked = []
    for piece, score in scores.items():
        splits = [(piece[:i], piece[i:]) for i in range(1, len(piece))]
        found = [(a, b) for a, b in splits if a in vocab and b in vocab]
        ranked += [
            (a, b, score) for a, b in sorted(found, key=lambda m: (vocab[m[0]], vocab[m[1]]))
        ]
    ranked.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in ranked]


def spm_backend(md: dict) -> tuple[Tokenizer, bool]:
    """The tokenizer, and whether it puts a space before text (the decoder strips it again)."""
    tokens = list(md["tokenizer.ggml.tokens"])
    if md.get("general.architecture") in GEMMA_ARCHITECTURES:
        tokens = [SPACE * len(t) if t and not t.strip(" ") else t for t in tokens]
        scores = {t: -float(i) for i, t in enumerate(tokens)}
    else:
        scores = dict(zip(tokens, md["tokenizer.ggml.scores"], strict=True))
    vocab = {t: i for i, t in enumerate(tokens)}
    if "tokenizer.ggml.merges" in md:  # "left right", split at the first space after char 1
        merges = [
            (m[:i], m[i + 1 :]) for m in md["tokenizer.ggml.merges"] for i in [m.index(" ", 1)]
        ]
    else:
        merges = merges_from_scores(vocab, scores)
    unk = md.get("tokenizer.ggml.unknown_token_id")
    backend = Tokenizer(
        models.BPE(
            vocab,
            merges,
            unk_token=tokens[unk] if unk is not None else None,
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    prefix = bool(md.get("tokenizer.ggml.add_space_prefix", True))
    spaces = normalizers.Replace(" ", SPACE)
    backend.normalizer = (
        normalizers.Sequence([normalizers.Prepend(SPACE), spaces]) if prefix else spaces
    )
    # mlx-lm recognises exactly these decoders (its SPM streaming detokenizer, with or without
    # the leading space trimmed) in an exported tokenizer.json.
    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    return backend, prefix
