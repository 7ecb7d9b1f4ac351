"""The tokenizer llama.cpp's converter flattened into ``tokenizer.ggml.*`` metadata, rebuilt as a
``tokenizers`` byte-level BPE (``gpt2``) or SentencePiece-style BPE (``llama``, see ``spm``), and
written as tokenizer.json beside HF's config files."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer, SPMStreamingDetokenizer
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from mlxd.models.gguf.header import UnsupportedModelError
from mlxd.models.gguf.spm import spm_backend

log = logging.getLogger(__name__)

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED = 2, 3, 4
SPECIAL_TOKEN_TYPES = {TOKEN_UNKNOWN, TOKEN_CONTROL}

# The split regexes llama.cpp's llama-vocab.cpp uses, as the HF pre-tokenizers that match them.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")  # digits one by one
TEKKEN_SPLIT = (  # Mistral Nemo / Small 3 (transformers' GGUF reader has the same)
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _gpt2_split():
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _smollm_split():  # llama.cpp: "\p{N}" first, then GPT-2's regex
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2_split()])


def _regex_split(regex: str):
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


_llama3_split = partial(_regex_split, LLAMA3_SPLIT)


# tokenizer.ggml.pre -> (pre-tokenizer, BPE ignore_merges). llama 3 looks whole words up in the
# vocab before merging (HF "ignore_merges"; llama.cpp does the same for these pre types).
PRE_TOKENIZERS: dict[str, tuple[Callable[[], pre_tokenizers.PreTokenizer], bool]] = {
    "gpt-2": (_gpt2_split, False),
    "gpt2": (_gpt2_split, False),
    "smollm": (_smollm_split, False),
    "llama-bpe": (_llama3_split, True),
    "llama3": (_llama3_split, True),
    "llama-v3": (_llama3_split, True),
    "qwen2": (partial(_regex_split, QWEN2_SPLIT), False),
    "deepseek-r1-qwen": (partial(_regex_split, QWEN2_SPLIT), False),
    "tekken": (partial(_regex_split, TEKKEN_SPLIT), True),
}
FALLBACK_PRE = "gpt-2"


@dataclass(frozen=True)
class TokenizerSpec:
    """A tokenizer rebuilt from ``tokenizer.ggml.*``, with what HF keeps beside tokenizer.json."""

    backend: Tokenizer
    special: dict[str, str | None]  # bos/eos/pad/unk token text
    eos_token_ids: list[int]
    chat_template: str | None
    model_max_length: int
    spm_space_prefix: bool | None = None  # SentencePiece: puts a space before text; None: BPE

    def detokenizer_class(self):
        """mlx-lm's streaming detokenizer for this kind of vocabulary."""
        if self.spm_space_prefix is None:
            return BPEStreamingDetokenizer
        return partial(SPMStreamingDetokenizer, trim_space=self.spm_space_prefix)


SUPPORTED_MODELS = "'gpt2' (byte-level BPE), 'llama' (SentencePiece)"


def tokenizer_spec(md: dict, model_max_length: int) -> TokenizerSpec:
    kind = md.get("tokenizer.ggml.model")
    if kind == "gpt2":
        pre = md.get("tokenizer.ggml.pre", FALLBACK_PRE)
        backend, prefix = _bpe(md["tokenizer.ggml.tokens"], md["tokenizer.ggml.merges"], pre), None
    elif kind == "llama":
        backend, prefix = spm_backend(md)
    else:
        raise UnsupportedModelError(f"tokenizer model {kind!r} (supported: {SUPPORTED_MODELS})")
    tokens = md["tokenizer.ggml.tokens"]
    types = md.get("tokenizer.ggml.token_type", [])
    backend.add_special_tokens(
        [_added(tokens[i], True) for i, t in enumerate(types) if t in SPECIAL_TOKEN_TYPES]
    )
    backend.add_tokens(
        [_added(tokens[i], False) for i, t in enumerate(types) if t == TOKEN_USER_DEFINED]
    )
    ids = {
        role: md.get(f"tokenizer.ggml.{key}_token_id")
        for role, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown"))
    }
    special = {role: (tokens[i] if i is not None else None) for role, i in ids.items()}
    # llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise.
    if md.get("tokenizer.ggml.add_bos_token", kind == "llama") and special["bos"] is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{special['bos']} $A",
            pair=f"{special['bos']} $A {special['bos']} $B",
            special_tokens=[(special["bos"], ids["bos"])],
        )
    # Generation ends at any of these; llama 3 instruct ends turns with eot, not eos.
    eos = [
        md[k]
        for k in (
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        )
        if k in md
    ]
    return TokenizerSpec(
        backend,
        special,
        sorted(set(eos)),
        md.get("tokenizer.chat_template"),
        model_max_length,
        prefix,
    )


def _bpe(tokens: list[str], merges: list[str], pre: str) -> Tokenizer:
    if pre not in PRE_TOKENIZERS:
        # A wrong split regex moves some token boundaries (digits, apostrophes) but keeps the text
        # intact, so serve the model rather than refuse it; say so once.
        log.warning("unknown tokenizer.ggml.pre %r; splitting words with GPT-2's regex", pre)
        pre = FALLBACK_PRE
    split, ignore_merges = PRE_TOKENIZERS[pre]
    # llama.cpp writes a merge as "left right"; it splits at the first space after the first char.
    pairs = [(m[:i], m[i + 1 :]) for m in merges for i in [m.index(" ", 1)]]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    backend = Tokenizer(models.BPE(vocab, pairs, ignore_merges=ignore_merges))
    backend.pre_tokenizer = split()
    backend.decoder = decoders.ByteLevel()
    return backend


def _added(content: str, special: bool) -> AddedToken:
    return AddedToken(content, special=special, normalized=False)


def hf_tokenizer(spec: TokenizerSpec) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=spec.backend,
        chat_template=spec.chat_template,
        model_max_length=spec.model_max_length,
        clean_up_tokenization_spaces=False,
        **{f"{role}_token": text for role, text in spec.special.items() if text is not None},
    )


def write_tokenizer(spec: TokenizerSpec, out: Path) -> None:
    spec.backend.save(str(out / "tokenizer.json"))
    special = {f"{role}_token": text for role, text in spec.special.items()}
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                # The generic class: a model-specific one would rebuild the pipeline from its own defaults.
                "tokenizer_class": "PreTrainedTokenizerFast",
                **special,
                "add_bos_token": spec.backend.post_processor is not None,
                "clean_up_tokenization_spaces": False,
                "model_max_length": spec.model_max_length,
                "chat_template": spec.chat_template,
            },
            indent=2,
            ensure_ascii=False,
        )
    )
    (out / "special_tokens_map.json").write_text(
        json.dumps(
            {k: v for k, v in special.items() if v is not None}, indent=2, ensure_ascii=False
        )
    )
