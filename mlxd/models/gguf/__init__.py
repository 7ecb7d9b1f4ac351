"""Import a GGUF file (llama.cpp's format) as an mlx-lm model and tokenizer.

We read the header ourselves first (stdlib; 0.07 s for SmolLM2's 49k tokens and merges), refuse
what we cannot load faithfully, and only then read the tensors, with numpy: float tensors as they
are, ggml's quantized blocks (Q4_0 ... Q8_0, IQ4_NL, Q2_K ... Q6_K) decoded exactly and stored as
MLX affine-quantized weights, with the error that costs measured and reported.

What llama.cpp's converter changed on the way in, undone here: tensor names, llama's Q/K row
permutation, gemma's ``1 + w`` norms (``archs``); the tokenizer, flattened into
``tokenizer.ggml.*`` metadata, rebuilt as a ``tokenizers`` BPE; llama 3's rope scaling and phi3's
LongRoPE, kept as tensors, recovered as mlx-lm rope_scaling.

Modules: ``header`` (the GGUF header, read with the stdlib), ``archs`` (the architectures: names,
config), ``hparams`` (metadata -> config.json), ``quants`` (ggml block formats, exact),
``repack`` (ggml blocks -> MLX quantized weights, and the error), ``tensors`` (tensor data, names,
the model), ``tokenizer`` (tokenizer.ggml.* -> tokenizer.json), ``export`` (``open_gguf``,
``load_gguf``, ``export_mlx``).
"""

from mlxd.models.gguf.export import GgufModel, check_supported, export_mlx, load_gguf, open_gguf
from mlxd.models.gguf.header import GgufHeader, TensorInfo, UnsupportedModelError, read_header
from mlxd.models.gguf.repack import TypeReport
from mlxd.models.gguf.tokenizer import TokenizerSpec, hf_tokenizer, tokenizer_spec, write_tokenizer

__all__ = [
    "GgufHeader",
    "GgufModel",
    "TensorInfo",
    "TokenizerSpec",
    "TypeReport",
    "UnsupportedModelError",
    "check_supported",
    "export_mlx",
    "hf_tokenizer",
    "load_gguf",
    "open_gguf",
    "read_header",
    "tokenizer_spec",
    "write_tokenizer",
]
