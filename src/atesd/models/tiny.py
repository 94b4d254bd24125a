"""The embedded model: a small Qwen3-architecture causal LM with a character-level tokenizer
(docs/method.md#embedded-testbed).

Everything is built locally, so the embedded default runs with no downloads: the tokenizer is a
`tokenizers` word-level model over single characters wrapped in `PreTrainedTokenizerFast`, with a
ChatML chat template that honours Qwen3's ``enable_thinking`` switch; the model is a randomly initialised
`Qwen3ForCausalLM`. Both are saved with ``save_pretrained`` and loaded back through the same
`transformers` code path as any hub model.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, "<|im_start|>", EOS_TOKEN, "<think>", "</think>"]
CHARACTERS = [chr(code) for code in range(32, 127)] + ["\n"]
# Characters of ordinary (English, LaTeX-ish) text that NFKD leaves as they are, with their ASCII spelling.
ASCII_SPELLINGS = {"\u2014": "-", "\u2013": "-", "\u2212": "-", "\u201c": '"', "\u201d": '"', "\u2018": "'",
                   "\u2019": "'", "\u00d7": "*", "\u00f7": "/", "\t": " ", "\r": ""}

# ChatML as Qwen3 writes it. With enable_thinking=false the assistant turn opens with an empty think block,
# exactly like Qwen3's own template, so student and teacher prompts differ at the generation boundary the
# same way they do for the real models.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{ '<think>\n\n</think>\n\n' }}{%- endif -%}"
    "{%- endif -%}"
)


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer with one token per printable ASCII character and newline, plus the ChatML specials.

    Text is first brought to ASCII where it has a plain spelling (accents dropped, typographic dashes, quotes
    and operators replaced: `ASCII_SPELLINGS`). It has no unknown token: any other character is an error when
    text is encoded (atesd names the problem or template and the characters before training starts), never
    silently a token the model reads as something else.
    """
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab))
    backend.normalizer = normalizers.Sequence([normalizers.NFKD(), normalizers.StripAccents(),
                                               *(normalizers.Replace(a, b) for a, b in ASCII_SPELLINGS.items())])
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(tokenizer: PreTrainedTokenizerFast, *, hidden_size: int, num_layers: int,
                     num_heads: int, num_kv_heads: int, intermediate_size: int, max_positions: int,
                     seed: int) -> Qwen3ForCausalLM:
    """A randomly initialised Qwen3 model sized for the embedded task."""
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
