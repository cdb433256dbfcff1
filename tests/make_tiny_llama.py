"""Write a tiny llama-architecture GGUF (random weights, ~17 MB) for engine tests.

The tokenizer is copied from llama.cpp's vocab-only `ggml-vocab-llama-spm.gguf` (32,000 tokens);
the model has 2 blocks, 64-wide embeddings, 4 heads and a 128-wide FFN, plus a chat template, so
engines that cannot load gemma3 (mistral.rs 0.8.1's GGUF loader) load it and generate (nonsense)
tokens. Usage: python make_tiny_llama.py VOCAB.gguf OUT.gguf
"""

import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
BLOCKS, WIDTH, HEADS, FFN, CONTEXT = 2, 64, 4, 128, 2048


def copy_tokenizer(reader: GGUFReader, writer: GGUFWriter) -> int:
    """Copy every `tokenizer.*` field; returns the vocabulary size."""
    vocab = 0
    for field in reader.fields.values():
        if not field.name.startswith("tokenizer."):
            continue
        kind = field.types[0]
        if kind == GGUFValueType.ARRAY:
            item = field.types[1]
            if item == GGUFValueType.STRING:
                values = [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data]
            else:
                values = [field.parts[i].tolist()[0] for i in field.data]
            writer.add_array(field.name, values)
            if field.name == "tokenizer.ggml.tokens":
                vocab = len(values)
        elif kind == GGUFValueType.STRING:
            writer.add_string(field.name, bytes(field.parts[field.data[0]]).decode("utf-8"))
        else:
            value = field.parts[field.data[0]].tolist()[0]
            {
                GGUFValueType.UINT32: writer.add_uint32,
                GGUFValueType.INT32: writer.add_int32,
                GGUFValueType.FLOAT32: writer.add_float32,
                GGUFValueType.BOOL: writer.add_bool,
            }.get(kind, writer.add_uint32)(field.name, value)
    return vocab


def main(vocab_path: str, out_path: str) -> None:
    reader = GGUFReader(vocab_path)
    writer = GGUFWriter(out_path, "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(WIDTH)
    writer.add_block_count(BLOCKS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(WIDTH // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(0)  # all F32
    vocab = copy_tokenizer(reader, writer)
    writer.add_chat_template(CHAT_TEMPLATE)

    rng = np.random.default_rng(7)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    tensor("token_embd.weight", vocab, WIDTH)
    writer.add_tensor("output_norm.weight", np.ones(WIDTH, dtype=np.float32))
    tensor("output.weight", vocab, WIDTH)
    for block in range(BLOCKS):
        prefix = f"blk.{block}"
        writer.add_tensor(f"{prefix}.attn_norm.weight", np.ones(WIDTH, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"{prefix}.{name}.weight", WIDTH, WIDTH)
        writer.add_tensor(f"{prefix}.ffn_norm.weight", np.ones(WIDTH, dtype=np.float32))
        tensor(f"{prefix}.ffn_gate.weight", FFN, WIDTH)
        tensor(f"{prefix}.ffn_up.weight", FFN, WIDTH)
        tensor(f"{prefix}.ffn_down.weight", WIDTH, FFN)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
