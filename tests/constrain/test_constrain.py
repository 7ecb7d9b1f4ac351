"""Constrained decoding: the token vocabulary, the per-sequence processor, and generation with
the tiny random model (whose arbitrary logits are exactly what a constraint must survive),
through generate_step and through a mixed BatchGenerator; one SmolLM2 extraction."""

from __future__ import annotations

import json
import random

import mlx.core as mx
import numpy as np
import pytest

from mlxd.constrain.index import Constraint, TokenVocabulary
from mlxd.constrain.json_schema import compile_schema, validate
from mlxd.constrain.vocab import token_pieces

from samples import PERSON, RICH, TREE

ENUMS = {
    "type": "object",
    "additionalProperties": False,
    "required": ["colour", "size"],
    "properties": {
        "colour": {"enum": ["red", "green", "blue"]},
        "size": {"type": ["integer", "null"]},
    },
}
LIST = {
    "type": "array",
    "items": {"anyOf": [{"type": "string"}, {"type": "number"}]},
    "maxItems": 4,
}
SCHEMAS = {
    "json_object": None,
    "person": PERSON,
    "tree": TREE,
    "rich": RICH,
    "enums": ENUMS,
    "list": LIST,
}
TOOL_PREFIX = '<tool_call>\n{"name": "f", "arguments": '
TOOL_SUFFIX = "}\n</tool_call>"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from mlx_lm import load

    model, tokenizer = load(str(tiny_model_dir))
    return model, tokenizer, TokenVocabulary.for_tokenizer(tokenizer)


def _shortest(schema) -> int:
    """Bytes of the shortest valid text: max_tokens at least this always finishes."""
    grammar = compile_schema(schema)
    return grammar.state_cost(grammar.initial)


def constraint_for(schema, vocab, eos_ids, prefix="", suffix="", max_tokens=None) -> Constraint:
    """A constraint to ``schema`` (None: any JSON object), as ``enforce.processor`` makes one."""
    return Constraint(compile_schema(schema), vocab, eos_ids, prefix, suffix, max_tokens)


def _check(text: str, schema) -> object:
    value = json.loads(text)
    validate(value, {"type": "object"} if schema is None else schema)
    return value


def _generate(
    model,
    tokenizer,
    vocab,
    schema,
    *,
    max_tokens,
    sampler=None,
    prefix="",
    suffix="",
    prompt="Give me JSON:",
):
    from mlx_lm.generate import generate_step

    constraint = constraint_for(
        schema, vocab, tokenizer.eos_token_ids, prefix, suffix, max_tokens=max_tokens
    )
    ids = []
    for token, _ in generate_step(
        mx.array(tokenizer.encode(prompt)),
        model,
        max_tokens=max_tokens,
        sampler=sampler,
        logits_processors=[constraint.processor()],
    ):
        if token in tokenizer.eos_token_ids:
            break
        ids.append(token)
    return tokenizer.decode(ids), ids, constraint


# ----- the vocabulary -----


def test_pieces_spell_what_the_tokenizer_decodes(tiny):
    _, tokenizer, vocab = tiny
    assert TokenVocabulary.for_tokenizer(tokenizer) is vocab
    hf = tokenizer._tokenizer
    special = set(hf.all_special_ids) | {i for i, t in hf.added_tokens_decoder.items() if t.special}
    assert len(special) == 3  # <|im_start|> is special without being eos, bos or pad
    assert all(vocab.pieces[i] is None for i in special)
    ordinary = [i for i, p in enumerate(vocab.pieces) if p]
    assert len(ordinary) == vocab.size - len(special)
    assert vocab.single_bytes >= set(range(256))  # byte-level BPE: every byte is a token
    rng = random.Random(0)
    for _ in range(200):
        ids = rng.choices(ordinary, k=rng.randint(1, 12))
        spelled = b"".join(vocab.pieces[i] for i in ids).decode("utf-8", "replace")
        assert spelled == tokenizer.decode(ids)


class _FakeSentencePiece:
    """What token_pieces reads of an HF tokenizer, for a SentencePiece-style vocabulary."""

    def __init__(self) -> None:
        from tokenizers import decoders

        self.tokens = [
            "<unk>",
            "<s>",
            "</s>",
            "<0x0A>",
            "<0x7B>",
            '\u2581"',
            "\u2581hi",
            '{"',
            "<tool>",
        ]
        self.all_special_ids = [0, 1, 2]
        self.added_tokens_decoder = {
            8: type("Added", (), {"special": False, "content": "<tool>"})()
        }
        self.backend_tokenizer = type(
            "Backend",
            (),
            {
                "decoder": decoders.Sequence(
                    [
                        decoders.Replace("\u2581", " "),
                        decoders.ByteFallback(),
                        decoders.Fuse(),
                        decoders.Strip(" ", 1, 0),
                    ]
                )
            },
        )()

    def __len__(self) -> int:
        return len(self.tokens)

    def convert_ids_to_tokens(self, ids):
        return [self.tokens[i] for i in ids]


def test_sentencepiece_pieces():
    assert token_pieces(_FakeSentencePiece()) == [
        None,
        None,
        None,
        b"\n",
        b"{",
        b' "',
        b" hi",
        b'{"',
        b"<tool>",
    ]


# ----- the processor protocol -----


def test_processor_follows_the_context_and_ends_with_eos(tiny):
    _, tokenizer, vocab = tiny
    eos = tokenizer.eos_token_ids
    c = constraint_for(PERSON, vocab, eos)
    process = c.processor()
    prompt = [5, 6, 7]
    text = '{"name":"Al","age":7}'
    ids = tokenizer.encode(text)
    logits = mx.zeros((1, vocab.size))
    context = list(prompt)
    for token in ids:
        allowed = np.array(process(mx.array(context), logits)[0] > -np.inf)
        assert allowed[token] and not any(allowed[e] for e in eos)
        context.append(token)
    assert not c.done
    allowed = np.array(process(mx.array(context), logits)[0] > -np.inf)
    assert c.done and set(np.flatnonzero(allowed)) == set(eos)  # complete: eos only
    c.advance(next(iter(eos)))
    assert c.ended and c.done and c.error is None


def test_processor_catches_up_on_several_tokens(tiny):
    _, tokenizer, vocab = tiny
    c = constraint_for(None, vocab, tokenizer.eos_token_ids)
    process = c.processor()
    ids = tokenizer.encode('{"a": [1, 2]}')
    process(mx.array([1, 2]), mx.zeros((1, vocab.size)))
    assert not c.done
    process(mx.array([1, 2] + ids), mx.zeros((1, vocab.size)))
    assert c.done and c.error is None


def test_refused_token_breaks_the_constraint_to_eos_only(tiny):
    _, tokenizer, vocab = tiny
    eos = tokenizer.eos_token_ids
    c = constraint_for(PERSON, vocab, eos)
    c.advance(tokenizer.encode("x")[0])
    assert c.error and not c.done
    assert set(np.flatnonzero(np.array(c.mask()))) == set(eos)
    c2 = constraint_for(PERSON, vocab, eos)
    c2.advance(next(iter(eos)))  # eos before the value is complete
    assert c2.error


def test_eos_that_spells_text_waits_for_completion(tiny):
    _, tokenizer, vocab = tiny
    [q] = tokenizer.encode("q")  # an ordinary token standing in as eos
    c = constraint_for(PERSON, vocab, {q})
    for token in tokenizer.encode('{"name":"'):
        c.advance(token)
    assert not np.array(c.mask())[q]  # "q" would fit in the string, but it ends the sequence
    for token in tokenizer.encode('b","age":1}'):
        c.advance(token)
    assert np.array(c.mask())[q]


def test_mask_is_padded_to_the_logits_width(tiny):
    _, tokenizer, vocab = tiny
    c = constraint_for(None, vocab, tokenizer.eos_token_ids)
    out = c.processor()(mx.array([1]), mx.zeros((1, vocab.size + 64)))
    assert out.shape == (1, vocab.size + 64)
    assert not np.isfinite(np.array(out[0, vocab.size :])).any()


@pytest.mark.parametrize("name", SCHEMAS)
def test_random_tokens_never_dead_end(tiny, name):
    """Walk by random allowed tokens: a token (or eos) is always allowed, eos exactly when the
    text is complete, and the squeeze finishes the value within max_tokens."""
    _, tokenizer, vocab = tiny
    eos = set(tokenizer.eos_token_ids)
    rng = np.random.default_rng(len(name))
    for max_tokens in (_shortest(SCHEMAS[name]) + extra for extra in (0, 16, 40)):
        c = constraint_for(SCHEMAS[name], vocab, eos, max_tokens=max_tokens)
        ids = []
        for _ in range(max_tokens):
            allowed = np.flatnonzero(np.array(c.mask()))
            assert allowed.size, f"dead end after {tokenizer.decode(ids)!r}"
            assert bool(eos & set(allowed)) == c.done
            token = int(rng.choice(allowed))
            if token in eos:
                break
            ids.append(token)
            c.advance(token)
        _check(tokenizer.decode(ids), SCHEMAS[name])


def test_masks_are_cached_per_state(tiny):
    _, tokenizer, vocab = tiny
    a = constraint_for(PERSON, vocab, tokenizer.eos_token_ids)
    b = constraint_for(PERSON, vocab, tokenizer.eos_token_ids)
    for c in (a, b):
        for token in tokenizer.encode('{"name":"ab'):
            c.advance(token)
    mask = a.mask()
    assert b.mask() is mask  # one GrammarIndex per grammar: the same state, the same array
    allowed = np.array(mask)
    assert allowed.dtype == bool and 0 < allowed.sum() < vocab.size


# ----- generation with the tiny model -----


@pytest.mark.parametrize("name", SCHEMAS)
def test_generate_step_greedy_and_sampled(tiny, name):
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer, vocab = tiny
    schema = SCHEMAS[name]
    runs = [None] + [make_sampler(temp=1.0)] * 3
    for seed, sampler in enumerate(runs):
        mx.random.seed(seed)
        text, _, _ = _generate(
            model, tokenizer, vocab, schema, max_tokens=_shortest(schema) + 32, sampler=sampler
        )
        _check(text, schema)


def test_budget_closes_at_the_shortest_completion(tiny):
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer, vocab = tiny
    shortest = _shortest(TREE)
    for extra in range(4):
        mx.random.seed(extra)
        text, ids, _ = _generate(
            model,
            tokenizer,
            vocab,
            TREE,
            max_tokens=shortest + extra,
            sampler=make_sampler(temp=1.0),
        )
        assert len(ids) <= shortest + extra
        _check(text, TREE)


def test_tool_call_wrapping(tiny):
    model, tokenizer, vocab = tiny
    budget = len(TOOL_PREFIX) + _shortest(PERSON) + len(TOOL_SUFFIX)
    text, _, constraint = _generate(
        model, tokenizer, vocab, PERSON, max_tokens=budget, prefix=TOOL_PREFIX, suffix=TOOL_SUFFIX
    )
    assert constraint.done
    assert text.startswith(TOOL_PREFIX) and text.endswith(TOOL_SUFFIX)
    _check(text[len(TOOL_PREFIX) : -len(TOOL_SUFFIX)], PERSON)
    call = json.loads(text[len("<tool_call>\n") : -len("\n</tool_call>")])
    assert call["name"] == "f"


def test_batch_generator_mixes_constrained_and_free_sequences(tiny):
    from mlx_lm.generate import BatchGenerator
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer, vocab = tiny
    eos = tokenizer.eos_token_ids
    plan = [PERSON, None, "free", TREE, ENUMS, "free", RICH, LIST]
    budget = 200
    constraints = [
        None if s == "free" else constraint_for(s, vocab, eos, max_tokens=budget) for s in plan
    ]
    mx.random.seed(3)
    gen = BatchGenerator(model, stop_tokens=[[e] for e in eos], completion_batch_size=8)
    prompts = [tokenizer.encode(f"Request number {i}:") for i in range(len(plan))]
    uids = gen.insert(
        prompts,
        max_tokens=[budget] * len(plan),
        samplers=[make_sampler(temp=1.0) if i % 2 else None for i in range(len(plan))],
        logits_processors=[[c.processor()] if c else [] for c in constraints],
    )
    out = {uid: [] for uid in uids}
    finished = set()
    while len(finished) < len(uids):
        for r in gen.next_generated():
            if r.token not in eos:
                out[r.uid].append(r.token)
            if r.finish_reason is not None:
                finished.add(r.uid)
    gen.close()
    for uid, schema, c in zip(uids, plan, constraints, strict=True):
        if c is not None:
            _check(tokenizer.decode(out[uid]), schema)


# ----- the real model -----


@pytest.mark.smollm
def test_smollm_extracts_name_and_age(smollm_path):
    from mlx_lm.generate import generate_step

    from mlxd.models.gguf import load_gguf

    model, tokenizer, _ = load_gguf(smollm_path)
    vocab = TokenVocabulary.for_tokenizer(tokenizer)
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "age"],
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    }
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Extract the name and age as JSON: John is 31 years old."}],
        add_generation_prompt=True,
    )
    constraint = constraint_for(schema, vocab, tokenizer.eos_token_ids, max_tokens=30)
    ids = []
    for token, _ in generate_step(
        mx.array(prompt), model, max_tokens=30, logits_processors=[constraint.processor()]
    ):
        if token in tokenizer.eos_token_ids:
            break
        ids.append(token)
    value = _check(tokenizer.decode(ids), schema)
    assert value["name"].strip() and isinstance(value["age"], int)
