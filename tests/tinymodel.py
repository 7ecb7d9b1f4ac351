"""Build tiny llama-shaped MLX models for the fast tests: random weights, a small byte-level BPE
tokenizer trained on the spot, and a ChatML chat template. Seconds to build, milliseconds a token."""

from __future__ import annotations

import json
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Qwen 2.5's template, abridged: tools in the system turn, calls as JSON in <tool_call> blocks
# (mlx-lm infers its "json_tools" parser from "<tool_call>" and "tool_call.name"), results as
# <tool_response> blocks in a user turn.
_QWEN_HEAD = (
    "{%- if tools %}{{- '<|im_start|>system\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
    "{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}"
    "{{- '\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}"
    "{%- for tool in tools %}{{- '\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\n</tools>\n\nFor each function call, return a json object with function name and "
    'arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": '
    '<function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n\' }}'
    "{%- elif messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or "
    "(message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>' + message.role }}"
    "{%- if message.content %}{{- '\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    '{{- \'\n<tool_call>\n{"name": "\' }}{{- tool_call.name }}'
    "{{- '\", \"arguments\": ' }}{{- tool_call.arguments | tojson }}{{- '}\n</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != 'tool') %}"
    "{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\n<tool_response>\n' }}{{- message.content }}{{- '\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}{{- '<|im_end|>\n' }}"
    "{%- endif %}{%- endif %}{%- endfor %}"
)
QWEN_TOOLS_TEMPLATE = (
    _QWEN_HEAD + "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
# A thinking model whose generation prompt opens the block (DeepSeek-R1, Qwen3 thinking): the
# reply starts inside it. enable_thinking=false closes it at once, as Qwen 3 does.
QWEN_THINK_TEMPLATE = _QWEN_HEAD + (
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\n\n</think>\n\n' }}{%- else %}{{- '<think>\n' }}{%- endif %}{%- endif %}"
)
TOOL_TOKENS = ["<tool_call>", "</tool_call>"]
THINK_TOKENS = ["<think>", "</think>"]
# template name -> (chat template, added tokens). As in Qwen's tokenizers, the tool and thinking
# markers are added tokens that are not "special": they stay in decoded text.
TEMPLATES = {
    "chatml": ("CHATML", []),
    "tools": ("QWEN_TOOLS", TOOL_TOKENS),
    "think": ("QWEN_THINK", TOOL_TOKENS + THINK_TOKENS),
}

# Enough varied text (ASCII, accents, CJK, emoji) for merges and multi-byte tokens to appear.
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "Hello, world! How are you today? I am fine, thank you.",
    "Streaming tokens over server-sent events, one delta at a time.",
    "Café crème, naïve façade, jalapeño, Zürich, Ångström.",
    "日本語のテキストと中文文本，还有한국어 텍스트.",
    "Emoji: 🙂 🚀 🎉 and math: ∑ ∫ √ ≤ ≥ ≠.",
    "def main():\n    print('hello')\n    return 0\n",
    "Numbers 0123456789 and symbols !@#$%^&*()[]{}<>?/|\\~`.",
]

TINY_CONFIG = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
}


def train_tokenizer(vocab_size: int = 400, added: list[str] | None = None):
    """A byte-level BPE tokenizer (the GPT-2 family that SmolLM2 and llama 3 use)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    if added:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    return tok


def write_tokenizer(path: Path, tok, chat_template: str = CHATML_TEMPLATE) -> None:
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "unk_token": None,
                "add_bos_token": False,
                "model_max_length": TINY_CONFIG["max_position_embeddings"],
                "chat_template": chat_template,
            },
            indent=2,
        )
    )
    (path / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
            }
        )
    )


def build_tiny_model(
    path: Path,
    *,
    seed: int = 0,
    quantize_bits: int | None = None,
    tie_word_embeddings: bool = False,
    template: str = "chatml",
    **overrides,
) -> Path:
    """Write a random-weight llama model directory that ``mlx_lm.load`` accepts. ``template``:
    "chatml" (no tools), "tools" (Qwen 2.5 style tool calling) or "think" (tools, and a
    generation prompt that opens a <think> block)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    template_name, added = TEMPLATES[template]
    tok = train_tokenizer(added=added)
    config = dict(
        TINY_CONFIG,
        vocab_size=tok.get_vocab_size(),
        tie_word_embeddings=tie_word_embeddings,
        eos_token_id=SPECIAL_TOKENS.index("<|im_end|>"),
        bos_token_id=None,
        **overrides,
    )
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    # Random init gives logits too flat to say anything; widen them so greedy picks vary by context.
    model.update(
        {
            "model": {
                "embed_tokens": {
                    "weight": mx.random.normal(model.model.embed_tokens.weight.shape) * 1.0
                }
            }
        }
    )
    if quantize_bits:
        import mlx.nn as nn

        nn.quantize(model, group_size=32, bits=quantize_bits)
        config["quantization"] = {"group_size": 32, "bits": quantize_bits}
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    (path / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(path, tok, globals()[template_name + "_TEMPLATE"])
    return path
