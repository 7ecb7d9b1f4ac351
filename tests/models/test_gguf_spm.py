"""SentencePiece vocabularies in GGUF (``tokenizer.ggml.model = "llama"``: Llama 2, Mistral 7B,
Phi-3, Gemma): a BPE model trained here with SentencePiece itself, flattened as llama.cpp's
converter writes it (pieces, scores, types; no merges), must encode and decode as SentencePiece
does; bytes outside the vocabulary fall back to ``<0xNN>`` tokens, and the streaming detokenizer
gives the text back."""

from __future__ import annotations

import pytest
import sentencepiece

from mlxd.models.gguf import hf_tokenizer, tokenizer_spec
from mlxd.models.gguf.spm import merges_from_scores

from tinymodel import CORPUS

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 5, 6
TEXTS = [
    "Hello, world! How are you today?",
    "The capital of France is Paris.",
    "Café crème, naïve façade, Zürich.",
    "日本語のテキスト and emoji 🙂 🦙",  # 🦙 is not in the training text: byte fallback
    "  leading spaces\n\n\ttabs and 'quotes' don't",
    "Numbers 0123456789 and 3.14159",
    "def main():\n    print('hello')",
]


@pytest.fixture(scope="module", params=[True, False], ids=["space-prefix", "no-prefix"])
def processor(request, tmp_path_factory) -> sentencepiece.SentencePieceProcessor:
    """A SentencePiece BPE trained as Llama's was: byte fallback, digits split, no normalization
    (with or without the dummy space prefix, as Gemma's)."""
    prefix = tmp_path_factory.mktemp("spm") / "m"
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20),
        model_prefix=str(prefix),
        vocab_size=600,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=request.param,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    return sentencepiece.SentencePieceProcessor(model_file=f"{prefix}.model")


def token_type(sp: sentencepiece.SentencePieceProcessor, i: int) -> int:
    """convert_hf_to_gguf.py's _create_vocab_sentencepiece."""
    for test, kind in (
        (sp.is_unknown, TOKEN_UNKNOWN),
        (sp.is_control, TOKEN_CONTROL),
        (sp.is_unused, TOKEN_UNUSED),
        (sp.is_byte, TOKEN_BYTE),
    ):
        if test(i):
            return kind
    return TOKEN_NORMAL


def spm_metadata(sp: sentencepiece.SentencePieceProcessor, arch: str = "llama") -> dict:
    """tokenizer.ggml.* as _set_vocab_sentencepiece writes them (no merges)."""
    ids = range(sp.vocab_size())
    prefix = sp.encode("a", out_type=str)[0].startswith("\u2581")
    return {
        "general.architecture": arch,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in ids],
        "tokenizer.ggml.scores": [sp.get_score(i) for i in ids],
        "tokenizer.ggml.token_type": [token_type(sp, i) for i in ids],
        "tokenizer.ggml.unknown_token_id": sp.unk_id(),
        "tokenizer.ggml.bos_token_id": sp.bos_id(),
        "tokenizer.ggml.eos_token_id": sp.eos_id(),
        "tokenizer.ggml.add_space_prefix": prefix,
    }


@pytest.mark.parametrize("arch", ["llama", "phi3", "gemma2"])
def test_encodes_and_decodes_as_sentencepiece(processor, arch):
    backend = tokenizer_spec(spm_metadata(processor, arch), 1024).backend
    for text in TEXTS:
        ids = backend.encode(text, add_special_tokens=False).ids
        assert ids == processor.encode(text), text
        assert backend.decode(ids) == processor.decode(ids) == text


def test_bytes_outside_the_vocabulary_fall_back_and_decode(processor):
    spec = tokenizer_spec(spm_metadata(processor), 1024)
    ids = spec.backend.encode("🦙", add_special_tokens=False).ids  # not in the training text
    assert [spec.backend.id_to_token(i) for i in ids][-4:] == [
        "<0xF0>",
        "<0x9F>",
        "<0xA6>",
        "<0x99>",
    ]
    assert spec.backend.decode(ids) == "🦙"


def test_bos_is_added_and_the_stream_rebuilds_the_text(processor):
    spec = tokenizer_spec(spm_metadata(processor), 1024)
    tokenizer = hf_tokenizer(spec)
    ids = tokenizer.encode("Café 🦙 ok")
    assert ids[0] == 1  # llama.cpp adds BOS to a SentencePiece vocabulary by default
    detok = spec.detokenizer_class()(tokenizer)
    detok.reset()
    for i in ids[1:]:
        detok.add_token(i)
    detok.finalize()
    assert detok.text == "Café 🦙 ok"


def test_merges_follow_the_scores():
    vocab = {"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "abc": 5}
    scores = {"ab": -2.0, "bc": -1.0, "abc": -3.0}
    assert merges_from_scores(vocab, scores) == [("b", "c"), ("a", "b"), ("ab", "c"), ("a", "bc")]


def test_a_model_with_a_sentencepiece_vocabulary_serves_and_exports(processor, tmp_path):
    from mlx_lm import load

    from mlxd.models.gguf import export_mlx, load_gguf

    from ggufwrite import build_arch_model, write_model_gguf

    md = spm_metadata(processor, "gemma2")
    vocab_size = len(md["tokenizer.ggml.tokens"])
    model_dir = build_arch_model(tmp_path / "g2", "gemma2", vocab_size=vocab_size)
    write_model_gguf(tmp_path / "g2.gguf", model_dir, vocab=md)
    model, tokenizer, _ = load_gguf(tmp_path / "g2.gguf")
    text = "Café crème 🦙 and 12345"
    ids = tokenizer.encode(text)
    assert ids[0] == 1 and tokenizer.decode(ids[1:]) == text
    out = export_mlx(tmp_path / "g2.gguf", tmp_path / "out")
    _, tokenizer2 = load(str(out))
    assert tokenizer2.encode(text) == ids
    assert type(tokenizer2.detokenizer).__name__ == "SPMStreamingDetokenizer"
    # gemma's files put no space before text; Llama's do, and the stream trims it again
    assert tokenizer2.detokenizer.trim_space is md["tokenizer.ggml.add_space_prefix"]
