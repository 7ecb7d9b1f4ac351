"""Import a llama-family GGUF file (llama.cpp's format) as an mlx-lm llama model and tokenizer.

``mx.load`` reads GGUF tensors natively: F32/F16 come back as arrays, and Q4_0, Q4_1 and Q8_0 as
MLX's own affine quantized triples (packed uint32 weight, float16 scales and biases, groups of 32).
It hides the tensor types, though: Q2_K/Q4_K/Q6_K become float16 without a word, BF16 is narrowed
to float16, and types it doesn't know vanish from the result. So we read the header ourselves first
(stdlib; 0.07 s for SmolLM2's 49k tokens and merges), refuse what we cannot load faithfully, and
only then load the tensors.

What llama.cpp's converter changed on the way in, undone here:
- tensor names (``blk.N.attn_q`` -> ``model.layers.N.self_attn.q_proj``, ...);
- Q and K rows, permuted for its interleaved ("GPT-J") rotary layout; mlx-lm's llama uses the
  HF half-split layout (``nn.RoPE(traditional=False)``);
- the tokenizer, flattened into ``tokenizer.ggml.*`` metadata; rebuilt as a ``tokenizers`` BPE;
- llama 3's rope scaling, kept only as a ``rope_freqs`` tensor; recovered as mlx-lm's "llama3".

Modules: ``header`` (the GGUF header, read with the stdlib), ``hparams`` (metadata -> config.json),
``tensors`` (tensor data, names, quantization), ``tokenizer`` (tokenizer.ggml.* -> tokenizer.json),
``export`` (``load_gguf`` and ``export_mlx``).
"""

from mlxd.models.gguf.export import check_supported, export_mlx, load_gguf
from mlxd.models.gguf.header import GgufHeader, TensorInfo, UnsupportedModelError, read_header
from mlxd.models.gguf.tokenizer import TokenizerSpec, hf_tokenizer, tokenizer_spec, write_tokenizer

__all__ = [
    "GgufHeader",
    "TensorInfo",
    "TokenizerSpec",
    "UnsupportedModelError",
    "check_supported",
    "export_mlx",
    "hf_tokenizer",
    "load_gguf",
    "read_header",
    "tokenizer_spec",
    "write_tokenizer",
]
