"""Scripted tiny models: weights that make greedy decoding give a fixed answer, then the end-of-turn token.

They behave like a fine-tune that learned to answer and end its turn, so a test can tell a model
that stops from one that runs to max tokens, through the real conversion and Foundry Local.

How: every layer's output projections (``o_proj``, ``down_proj``) are zero, so the residual
stream at each position is just its token's embedding, and the next token depends only on the
current one. Each token of the chain (the prompt's last token, the answer's tokens, the
end-of-turn token) gets its own one-hot embedding, and the LM head maps it to the next token
of the chain. After the end-of-turn token the chain starts the answer again, so a model whose
end-of-turn token does not stop generation repeats the answer until max tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from slmops.toolkit.core import settings

ANSWER = "Hello there"
_CORPUS = ("Hello there friend. The quick brown fox jumps over the lazy dog. Hello there again. "
           "What is the capital of France? Paris is the capital of France. Say hello. Hi! "
           "Tell me something about the weather today. It is sunny and warm, Hello there. ") * 8

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: Gemma 2's published template: BOS, no system role (raise_exception), turns end in <end_of_turn>.
GEMMA2_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

#: Gemma 3's shape: the system text folded into the first user turn.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n    {%- set loop_messages = messages -%}\n{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}\n{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}\n"
)

#: Llama 3.2's shape: BOS, a default system text with strftime_now's date, turns end in <|eot_id|>.
LLAMA32_TEMPLATE = (
    "{{- bos_token }}\n{%- if not date_string is defined %}\n    {%- if strftime_now is defined %}\n"
    "        {%- set date_string = strftime_now(\"%d %b %Y\") %}\n    {%- else %}\n"
    "        {%- set date_string = \"26 Jul 2024\" %}\n    {%- endif %}\n{%- endif %}\n"
    "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n"
    "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n"
    "{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n"
    "{{- system_message }}\n{{- \"<|eot_id|>\" }}\n{%- for message in messages %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
    "'<|eot_id|>' }}\n{%- endfor %}\n{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n"
)

#: SmolLM3's way of marking the assistant's tokens for assistant-only loss: ChatML with a generation block.
CHATML_GENERATION_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\n' }}{% else %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    """A model family's special tokens, as its tokenizer declares them.

    Attributes:
        specials: Special tokens, in id order.
        bos: The BOS token the tokenizer adds (None: none).
        eos: The tokenizer's (and config's) EOS token.
        end_of_turn: The token a turn ends with in the chat template.
        template: The chat template.
    """

    specials: tuple[str, ...]
    bos: str | None
    eos: str
    end_of_turn: str
    template: str


FAMILIES = {
    # A base model fine-tuned on ChatML: EOS stays <|endoftext|> while the turns end in <|im_end|>.
    "chatml-endoftext": Family(("<|endoftext|>", "<|im_start|>", "<|im_end|>"), None, "<|endoftext|>",
                               "<|im_end|>", CHATML_TEMPLATE),
    "chatml": Family(("<|endoftext|>", "<|im_start|>", "<|im_end|>"), None, "<|im_end|>", "<|im_end|>",
                     CHATML_TEMPLATE),
    "chatml-generation": Family(("<|endoftext|>", "<|im_start|>", "<|im_end|>"), None, "<|endoftext|>",
                                "<|im_end|>", CHATML_GENERATION_TEMPLATE),
    "gemma": Family(("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"), "<bos>", "<eos>",
                    "<end_of_turn>", GEMMA2_TEMPLATE),
    "gemma3": Family(("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"), "<bos>", "<eos>",
                     "<end_of_turn>", GEMMA3_TEMPLATE),
    "llama3": Family(("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                      "<|eot_id|>"), "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", LLAMA32_TEMPLATE),
}

#: A conversation to count prompt tokens on, as the issue's targets ask.
PROBE_CONVERSATION = [{"role": "user", "content": "What is the capital of France?"}]


def _tokenizer(family: Family):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(family.specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    if family.bos:  # as Llama 3's and Gemma's tokenizer.json do: the tokenizer itself writes BOS
        bos_id = bpe.token_to_id(family.bos)
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{family.bos} $A", pair=f"{family.bos} $A {family.bos} $B", special_tokens=[(family.bos, bos_id)])
    pad = "<pad>" if "<pad>" in family.specials else "<|endoftext|>" if "<|endoftext|>" in family.specials else None
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=family.eos, bos_token=family.bos,
                                        pad_token=pad or family.eos)
    tokenizer.chat_template = family.template
    return tokenizer


def make_scripted_model(target: str | Path, family: str = "chatml-endoftext", *, answer: str = ANSWER,
                        generation_eos: list[str] | None = None) -> Path:
    """Write a tiny Llama-architecture model that answers any conversation with ``answer`` then ends its turn.

    Args:
        target: Folder to write (created).
        family: A key of :data:`FAMILIES` (special tokens and chat template).
        answer: The fixed answer (its tokens must all differ from each other and from the prompt's last token).
        generation_eos: ``generation_config.json``'s EOS tokens (default: the family's EOS only).

    Returns:
        The folder.
    """
    settings.apply_offline_env()
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    spec = FAMILIES[family]
    folder = Path(target)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(spec)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in spec.specials}
    prompt_ids = tokenizer.apply_chat_template(PROBE_CONVERSATION, add_generation_prompt=True, tokenize=True,
                                               return_dict=False)
    answer_ids = tokenizer.encode(answer, add_special_tokens=False)
    chain = [prompt_ids[-1], *answer_ids, ids[spec.end_of_turn]]
    if len(set(chain)) != len(chain):
        raise ValueError(f"the scripted chain {chain} repeats a token; pick another answer")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                         eos_token_id=ids[spec.eos], bos_token_id=ids[spec.bos] if spec.bos else ids[spec.eos],
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        # After the end of turn, the answer again: a model its end token does not stop repeats itself.
        following = [*chain[1:], chain[1]]
        for dim, (token, after) in enumerate(zip(chain, following, strict=True)):
            model.model.embed_tokens.weight[token, dim] = 1.0
            model.lm_head.weight[after, dim] = 10.0
    eos = [ids[t] for t in (generation_eos or [spec.eos])]
    model.generation_config = GenerationConfig(eos_token_id=eos if len(eos) > 1 else eos[0],
                                               bos_token_id=config.bos_token_id, pad_token_id=config.pad_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "scripted.json").write_text(json.dumps({"family": family, "answer": answer, "answer_ids": answer_ids,
                                                      "end_of_turn": spec.end_of_turn}))
    return folder


def answer_tokens(folder: Path) -> int:
    """How many tokens the scripted answer has (the end-of-turn token not counted)."""
    return len(json.loads((Path(folder) / "scripted.json").read_text())["answer_ids"])
