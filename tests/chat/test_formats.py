"""The chat format object: a checkpoint's own template rendered as transformers renders it, its answers delimited
for the loss, its stops and turn markers found; a template that cannot be delimited refused in one line."""
from __future__ import annotations

import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from chatpipe.tasks.chat.format import Turn, render
from chatpipe.tasks.chat.formats import Ours, Template, template_record
from chatpipe.tasks.common.config import PROJECT_ROOT, load_params
from chatpipe.tasks.common.errors import ConfigError, InputError
from chatpipe.tasks.tokens.pack import pack

# SmolLM2-135M-Instruct's template (its GGUF's tokenizer.chat_template): ChatML with a default system prompt.
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
          "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIAL = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>"}
CONVERSATION = (Turn("user", "Hi there!"), Turn("assistant", "Hello! How can I help?"),
                Turn("user", "What is 2+2?"), Turn("assistant", "It is 4.\n\nAnything else?"))


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    """A small byte-level BPE with ChatML's special tokens (and <|endoftext|>), as an instruct model has."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    text = (PROJECT_ROOT / "data" / "chat_combined.txt").read_text()
    tok.train_from_iterator(text.splitlines(), trainers.BpeTrainer(
        vocab_size=500, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[AddedToken(t, special=True, normalized=False)
                        for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")]))
    return tok


@pytest.fixture(scope="module")
def chatml(tok) -> Template:
    return Template(tok, template_record(CHATML, SPECIAL, tok, "gguf:test"))


def test_a_chatml_template_is_recorded_with_its_end_of_turn_and_turn_markers(chatml):
    assert chatml.end == "<|im_end|>" and chatml.turn_markers == ("<|im_start|>",)
    assert chatml.stop == ("<|im_end|>",) and chatml.separator == "<|endoftext|>"


def test_rendering_is_transformers_apply_chat_template(tok, chatml):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=CHATML, **SPECIAL)
    messages = [{"role": t.role, "content": t.text} for t in CONVERSATION]
    assert chatml.render(CONVERSATION) == hf.apply_chat_template(messages, tokenize=False)
    assert chatml.prompt(CONVERSATION[:3]) == hf.apply_chat_template(messages[:3], tokenize=False,
                                                                     add_generation_prompt=True)
    ids = tok.encode(chatml.prompt(CONVERSATION[:3]), add_special_tokens=False).ids
    assert ids == hf.apply_chat_template(messages[:3], add_generation_prompt=True, return_dict=True)["input_ids"]


def test_the_loss_is_on_each_answer_and_its_end_of_turn_token(tok, chatml):
    (doc,) = chatml.encode([render(CONVERSATION)], [True])
    supervised = tok.decode(doc.ids[doc.weights == 1].tolist(), skip_special_tokens=False)
    assert supervised == "Hello! How can I help?<|im_end|>It is 4.\n\nAnything else?<|im_end|>"
    assert doc.text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert doc.ids[-1] == tok.token_to_id("<|endoftext|>") and doc.weights[-1] == 0  # the separator
    assert chatml.ends_on_answer(doc)
    starts = {role: [tok.id_to_token(int(doc.ids[i])) for i in at] for role, at in doc.starts.items()}
    assert starts == {"user": ["<|im_start|>"] * 2, "assistant": ["<|im_start|>"] * 2}
    (code,) = chatml.encode(["def f():\n    return 1\n"], [False])
    assert code.weights.all() and code.starts is None  # not a conversation: every token, the separator too


def test_a_long_conversation_packs_at_its_turns(tok, chatml):
    long = tuple(Turn(role, f"turn number {i} " * 3) for i, role in enumerate(["user", "assistant"] * 6))
    (doc,) = chatml.encode([render(long)], [True])
    packed = pack([doc], 48, chatml.eot)
    assert packed.counts["conversations split"] == 1 and len(packed.tokens) > 1
    answers = sum(int((c == 2).sum()) for c in packed.codes)
    assert answers == int(doc.weights.sum())  # every answer token kept, none cropped
    for row, codes in zip(packed.tokens, packed.codes):
        assert tok.id_to_token(int(row[0])) == "<|im_start|>"  # each piece starts at a turn


def test_ours_is_unchanged(built):
    from chatpipe.tasks.tokens.tokenizer import load

    ours = Ours(load(built[0].tokenizer))
    assert ours.prompt(CONVERSATION[:1]) == "<|user|> Hi there!\n<|assistant|>"
    (doc,) = ours.encode([render(CONVERSATION)], [True])
    supervised = ours.tokenizer.decode(doc.ids[doc.weights == 1].tolist(), skip_special_tokens=False)
    assert supervised == " Hello! How can I help?\n<|user|> It is 4.\n\nAnything else?\n<|endoftext|>"


@pytest.mark.parametrize("template, message", [
    (None, "chat.format model: gguf:test has no chat template; use chat.format: ours"),
    # the answer is not closed by a special token: nothing tells the model to stop
    ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
     "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}",
     "chat.format model: gguf:test's chat template ends an answer with '\\n', not a special token"),
    # earlier answers rendered otherwise than the last (as reasoning templates drop old thoughts): no prefix
    ("{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}{{ '<|im_start|>assistant\n"
     "(earlier)<|im_end|>\n' }}{% else %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
     "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
     "chat.format model: the chat template does not render a conversation as its prompts followed by their answers"),
])
def test_a_template_that_cannot_be_delimited_is_one_line(tok, template, message):
    with pytest.raises(InputError) as e:
        template_record(template, SPECIAL, tok, "gguf:test")
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_the_model_format_needs_an_adopted_tokenizer():
    with pytest.raises(ConfigError, match="chat.format: model needs tokenizer.from"):
        load_params([], ["chat.format=model"], base=PROJECT_ROOT / "params.yaml")


def test_weights_of_a_batch_match_one_by_one(tok, chatml):
    texts = [render(CONVERSATION), "plain text", render(CONVERSATION[:2])]
    batch = chatml.encode(texts, [True, False, True])
    for text, chat, doc in zip(texts, [True, False, True], batch):
        (alone,) = chatml.encode([text], [chat])
        assert np.array_equal(alone.ids, doc.ids) and np.array_equal(alone.weights, doc.weights)
