"""atesd's decode loop against transformers' generate: the same tokens from the same seed.

Given the same logits, the loop samples exactly what ``generate(do_sample=True)`` samples (same processors in
the same order, same random stream, same EOS handling), so every comparison here is equality of token ids:
on the warm-started embedded model (Qwen3 architecture, which stops on its own), on two other architectures
built here (Llama, GPT-2; a small vocabulary so that EOS comes early), through a peft LoRA wrapper, with each
cache and with finished rows dropped or kept.
"""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from atesd.rollout import DecodeOptions, HFGenerateEngine, SamplingParams
from atesd.rollout.decode import keeps_the_stream, same_stream_sample

EOS, PAD = 2, 0
SAMPLINGS = [
    SamplingParams(temperature=1.0, max_new_tokens=20),
    SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=20),
    SamplingParams(temperature=1.3, top_k=5, max_new_tokens=20),
    SamplingParams(temperature=0.8, top_p=0.8, top_k=12, max_new_tokens=20),
]
OPTIONS = [DecodeOptions(), DecodeOptions(cache="dynamic"), DecodeOptions(drop_finished=False),
           DecodeOptions(cache="dynamic", drop_finished=False)]


@pytest.fixture(scope="module")
def embedded(tiny_config, tmp_path_factory):
    """The session's warm-started embedded model and a few of its student prompts (lengths differ: padding)."""
    from transformers import AutoTokenizer

    from atesd.data.arithmetic import embedded_splits
    from atesd.data.prompts import PromptBuilder
    from atesd.experiments.warm_start import embedded_base_model

    config = tiny_config(tmp_path_factory.mktemp("decode"))
    model_dir = embedded_base_model(config)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = PromptBuilder(tokenizer, config.templates, config.model.student_chat_kwargs,
                            config.model.teacher_chat_kwargs)
    problems = embedded_splits(config.data.task, config.data.probe_size)["train"]
    return (AutoModelForCausalLM.from_pretrained(model_dir), tokenizer,
            [prompts.student(p) for p in problems[:8]])


def engines(model, pad: int, eos: int, batch_size: int, options: DecodeOptions):
    def make(sampler):
        return HFGenerateEngine(model, pad_token_id=pad, eos_token_id=eos, batch_size=batch_size,
                                sampler=sampler, decode_options=options)
    return make("generate"), make("loop")


def assert_same_samples(model, prompts, pad: int, eos: int, *, batch_sizes=(1, 3, 8), seeds=(0, 1, 2),
                        samplings=SAMPLINGS, options=OPTIONS) -> tuple[int, int]:
    """Every (options, batch size, sampling, seed): the loop's completions and flags equal generate's. Returns
    how many completions finished on EOS and how many ran to the limit, over all comparisons."""
    stopped = ran_out = 0
    for option in options:
        for batch_size in batch_sizes:
            generate, loop = engines(model, pad, eos, batch_size, option)
            for sampling in samplings:
                for seed in seeds:
                    expected = generate.generate(prompts, sampling, torch.Generator().manual_seed(seed))
                    got = loop.generate(prompts, sampling, torch.Generator().manual_seed(seed))
                    assert got.completion_ids == expected.completion_ids, (option, batch_size, sampling, seed)
                    assert got.finished == expected.finished
                    stopped += sum(expected.finished)
                    ran_out += len(expected.finished) - sum(expected.finished)
            assert loop.sampler == "loop"  # no fallback happened
    return stopped, ran_out


def test_embedded_model_samples_what_generate_samples(embedded):
    model, tokenizer, prompts = embedded
    stopped, ran_out = assert_same_samples(model, prompts, tokenizer.pad_token_id, tokenizer.eos_token_id)
    assert stopped > 0 and ran_out > 0  # both ends of a completion were compared


def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    # initializer_range 0.3: weights large enough that positions and adapters change the samples (at the
    # default 0.02 a random model's attention is nearly uniform, and a wrong position would go unnoticed).
    return LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        initializer_range=0.3, pad_token_id=PAD, eos_token_id=EOS,
                                        bos_token_id=1)).eval()


def tiny_gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=16, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                      initializer_range=0.3, pad_token_id=PAD, eos_token_id=EOS,
                                      bos_token_id=1)).eval()


PROMPTS = [[5, 6, 7, 8, 9], [3], [4, 12, 13], [10, 11, 5, 6, 7, 8, 9, 3]]


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
def test_other_architectures_sample_what_generate_samples(build):
    stopped, ran_out = assert_same_samples(build(), PROMPTS, PAD, EOS, batch_sizes=(1, 4), seeds=(0, 1),
                                           samplings=SAMPLINGS[:3])
    assert stopped > 0 and ran_out > 0


def test_prompts_without_padding_sample_what_generate_samples():
    # generate drops the attention mask when no prompt is padded; the loop feeds the model the same way.
    assert_same_samples(tiny_llama(), [[5, 6, 7], [8, 9, 3], [4, 4, 4]], PAD, EOS, batch_sizes=(3,), seeds=(0, 1),
                        samplings=SAMPLINGS[:2])


def test_lora_model_samples_what_generate_samples():
    from peft import LoraConfig, get_peft_model

    # init_lora_weights=False: adapters that change the outputs, so that a loop ignoring them would differ.
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                    init_lora_weights=False))
    assert_same_samples(model, PROMPTS, PAD, EOS, batch_sizes=(4,), seeds=(0, 1), samplings=SAMPLINGS[:2],
                        options=OPTIONS[:2])


def test_model_generation_config_processors_are_applied():
    # A repetition penalty from the model's own generation config: generate applies it, so must the loop.
    model = tiny_llama()
    model.generation_config.repetition_penalty = 1.5
    assert_same_samples(model, PROMPTS, PAD, EOS, batch_sizes=(4,), seeds=(0, 1), samplings=SAMPLINGS[:1],
                        options=OPTIONS[:1])


def test_a_model_the_loop_cannot_serve_is_sampled_with_generate(caplog):
    model = tiny_llama()
    model.generation_config.max_time = 100.0  # a stopping criterion the loop does not implement
    generate, loop = engines(model, PAD, EOS, 4, DecodeOptions())
    sampling = SamplingParams(max_new_tokens=10)
    with caplog.at_level(logging.WARNING, logger="atesd.rollout.hf"):
        got = loop.generate(PROMPTS, sampling, torch.Generator().manual_seed(0))
    assert loop.sampler == "generate"
    assert "max_time" in caplog.text and "generate instead" in caplog.text
    assert got.completion_ids == generate.generate(PROMPTS, sampling, torch.Generator().manual_seed(0)).completion_ids


def test_dropping_rows_keeps_the_random_stream():
    assert keeps_the_stream(torch.device("cpu"))
    probs = torch.softmax(torch.randn(9, 30), dim=-1)
    rows = torch.tensor([0, 2, 3, 7])
    for seed in range(5):
        torch.manual_seed(seed)
        expected = torch.multinomial(probs, 1).squeeze(1)
        torch.manual_seed(seed)
        assert torch.equal(same_stream_sample(probs[rows], rows, 9), expected[rows])


def test_compile_implies_fixed_shapes():
    assert DecodeOptions(cache="dynamic", compile=True).fixed_shapes() == DecodeOptions("static", False, True)
    assert DecodeOptions(cache="dynamic").fixed_shapes() == DecodeOptions(cache="dynamic")


@pytest.mark.slow
def test_compiled_step_samples_what_generate_samples():
    # Compiled code need not round exactly like eager code: a top-k of 1 makes every sample the argmax, so the
    # comparison tests the compiled step's cache, positions and masks, not its last bits.
    assert_same_samples(tiny_llama(), PROMPTS, PAD, EOS, batch_sizes=(4,), seeds=(0,),
                        samplings=[SamplingParams(top_k=1, max_new_tokens=12)],
                        options=[DecodeOptions(compile=True)])


@pytest.mark.slow
def test_smollm2_samples_what_generate_samples(smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           tokenize=False)
             for question in ("What is 2 + 3?", "Name a prime number larger than ten.", "Say hi.")]
    prompts = [tokenizer(text, add_special_tokens=False).input_ids for text in texts]
    assert_same_samples(model, prompts, tokenizer.pad_token_id, tokenizer.eos_token_id, batch_sizes=(3,),
                        seeds=(0,), samplings=[SamplingParams(temperature=1.0, top_p=0.95, top_k=20,
                                                              max_new_tokens=12)], options=OPTIONS[:2])
