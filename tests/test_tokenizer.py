"""minillm.tokenizer: encode/decode, chat template, incremental detokenizer, stop strings."""

from __future__ import annotations

import json
import random

import pytest

from minillm.tokenizer import IncrementalDetokenizer, Tokenizer, find_stop, stop_holdback
from tests.demo import demo_model_dir
from tests.tiny import make_tokenizer

TEXTS = [
    "Hello, world! The capital of France is Paris.",
    "Emoji: 😀🎉👍🏽 and a family 👨‍👩‍👧 (joined by zero-width joiners).",
    "中文：你好，世界。日本語：こんにちは。한국어: 안녕하세요.",
    "Accents: café, naïve, Ångström, Œuvre; math: ∑ x² ≤ ∞; arrows ← →.",
    "Code:\n    def f(x):\n        return x ** 2  # squared\n\ttab",
    "numbers 1234567890 and spaces    here",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(demo_model_dir())


# ---- Tokenizer ----


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_roundtrip(tok, text):
    ids = tok.encode(text)
    assert ids and all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_demo_tokenizer_facts(tok):
    assert tok.vocab_size == 49152
    assert tok.eos_token_ids == (2,)  # <|im_end|>, also generation_config.json's
    assert tok.hf_tokenizer.convert_ids_to_tokens(2) == "<|im_end|>"
    assert tok.encode("Hi")[0] != 1  # SmolLM2 adds no BOS to plain prompts


def test_decode_skips_special_tokens_unless_asked(tok):
    ids = [1, *tok.encode("hi"), 2]
    assert tok.decode(ids) == "hi"
    assert tok.decode(ids, skip_special_tokens=False) == "<|im_start|>hi<|im_end|>"


def test_fast_decode_equals_the_transformers_decode(tok, tmp_path):
    """`decode` calls the Rust tokenizer directly where transformers adds nothing to it: the
    same text on random ids (partial characters, special tokens), byte-level and
    SentencePiece-style alike."""
    rng = random.Random(0)
    for t in (tok, _sentencepiece_style_tokenizer(tmp_path)):
        assert t._rust_decode is not None
        for _ in range(300):
            ids = [rng.randrange(t.vocab_size) for _ in range(rng.randint(1, 6))]
            for skip in (True, False):
                assert t.decode(ids, skip) == t.hf_tokenizer.decode(
                    ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)


def test_chat_template(tok):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(messages)
    expected = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                "Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?"
                "<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(ids, skip_special_tokens=False) == expected
    im_start = tok.hf_tokenizer.convert_tokens_to_ids("<|im_start|>")
    head = [im_start, *tok.hf_tokenizer.encode("system\n")]
    tail = [im_start, *tok.hf_tokenizer.encode("assistant\n")]  # the generation prompt
    assert ids[:len(head)] == head and ids[-len(tail):] == tail
    without = tok.apply_chat_template(messages, add_generation_prompt=False)
    assert without == ids[:-len(tail)]


def test_chat_template_with_system_and_history(tok):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
    text = tok.decode(tok.apply_chat_template(messages), skip_special_tokens=False)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert "SmolLM" not in text  # the default system prompt only comes without a system message


@pytest.mark.parametrize("messages, match", [
    ([], "non-empty list"),
    ("Hi", "non-empty list"),
    ([("user", "Hi")], r"messages\[0\].*dict"),
    ([{"role": "user", "content": "Hi"}, {"role": "bot", "content": "x"}],
     r"messages\[1\]\['role'\]='bot'.*system, user, assistant, tool"),
    ([{"content": "Hi"}], r"messages\[0\]\['role'\]=None"),
    ([{"role": "user", "content": None}], r"messages\[0\]\['content'\]=None.*string"),
    ([{"role": "user", "content": ["Hi"]}], r"messages\[0\]\['content'\]"),
])
def test_chat_messages_are_validated(tok, messages, match):
    with pytest.raises(ValueError, match=match):
        tok.apply_chat_template(messages)


def test_eos_ids_from_generation_config(tmp_path):
    hf = make_tokenizer()
    hf.save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 2]}))
    tok = Tokenizer(str(tmp_path))
    assert hf.eos_token_id == 2  # <|im_end|> in the tiny tokenizer
    assert tok.eos_token_ids == (2, 0)


def test_no_chat_template_is_a_value_error(tmp_path):
    hf = make_tokenizer()
    hf.chat_template = None
    hf.save_pretrained(tmp_path)
    tok = Tokenizer(str(tmp_path))
    assert tok.eos_token_ids == (2,)
    with pytest.raises(ValueError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "Hi"}])


# ---- IncrementalDetokenizer ----


def _stream(tok, ids, prompt=(), skip_special_tokens=True):
    detok = IncrementalDetokenizer(tok, prompt, skip_special_tokens=skip_special_tokens)
    deltas = [detok.add(t) for t in ids]
    deltas.append(detok.flush())
    assert "".join(deltas) == detok.text
    return deltas


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_text_never_shows_half_a_character(tok, text):
    ids = tok.encode(text)
    deltas = _stream(tok, ids)
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)
    if any(ord(c) > 0xFFFF for c in text):  # emoji are split over several byte tokens
        assert "" in deltas[:-1], "no token was held back: the test would prove nothing"


def test_streamed_text_equals_decode_on_random_token_sequences(tok):
    """The invariant on sequences no model would write: random ids, lone UTF-8 bytes (lead and
    continuation bytes in any order), special tokens, pieces of multi-byte text."""
    rng = random.Random(0)
    vocab = tok.hf_tokenizer.get_vocab()
    # single-byte tokens: one character each in byte-level BPE (SmolLM2 has 235 of the 256)
    byte_tokens = [i for t, i in vocab.items() if len(t) == 1]
    assert len(byte_tokens) > 200
    text_tokens = [i for text in TEXTS for i in tok.encode(text)]
    specials = list(range(17))
    held_back = 0
    for _ in range(400):
        pools = rng.choices([byte_tokens, text_tokens, specials, range(tok.vocab_size)],
                            weights=[4, 4, 1, 2], k=rng.randint(1, 40))
        ids = [rng.choice(pool) for pool in pools]
        prompt = rng.choice([[], tok.encode(rng.choice(TEXTS))])
        deltas = _stream(tok, ids, prompt)
        assert "".join(deltas) == tok.decode(ids), ids
        held_back += deltas[:-1].count("")
    assert held_back > 100


def test_prompt_context_does_not_change_the_text(tok):
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    ids = tok.encode("Hello! How can I help you today? 😀")
    assert "".join(_stream(tok, ids, prompt)) == tok.decode(ids)
    cut_prompt = tok.encode("x 😀")[:-1]  # the prompt ends inside the emoji
    assert tok.decode(cut_prompt).endswith("\ufffd")
    assert "".join(_stream(tok, ids, cut_prompt)) == tok.decode(ids)


def _sentencepiece_style_tokenizer(path) -> Tokenizer:
    """A Llama-2-style tokenizer: "▁" marks spaces (dropped at the start of a text), and
    characters outside the vocabulary fall back to <0xNN> byte tokens."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.tiny import CORPUS

    raw = RawTokenizer(models.BPE(byte_fallback=True))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    raw.decoder = decoders.Sequence([decoders.Metaspace(prepend_scheme="first"),
                                     decoders.ByteFallback(), decoders.Fuse()])
    specials = ["<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    raw.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(vocab_size=400,
                                                            special_tokens=specials))
    spec = json.loads(raw.to_str())  # the trainer made the byte tokens special: make them plain
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] in ("<s>", "</s>")]
    raw = RawTokenizer.from_str(json.dumps(spec))
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>",
                            bos_token="<s>").save_pretrained(path)
    return Tokenizer(str(path))


def test_sentencepiece_first_word_keeps_its_space_after_a_prompt(tmp_path):
    sp = _sentencepiece_style_tokenizer(tmp_path)
    prompt = sp.encode("The capital of France is")
    completion = sp.hf_tokenizer.encode(" Paris. 🎉 你好", add_special_tokens=False)
    assert sp.hf_tokenizer.convert_ids_to_tokens(completion)[:2] == ["▁", "Par"]
    assert "<0xF0>" in sp.hf_tokenizer.convert_ids_to_tokens(completion)  # 🎉 as 4 bytes
    deltas = _stream(sp, completion, prompt)
    assert "".join(deltas) == " Paris. 🎉 你好"  # decoded after the prompt: a space first
    assert not any("\ufffd" in d for d in deltas)
    assert "".join(_stream(sp, completion)) == sp.decode(completion) == "Paris. 🎉 你好"


def test_flush_emits_an_incomplete_character_at_the_end(tok):
    first_byte = tok.encode(" 😀")[0]
    assert tok.decode([first_byte]).endswith("\ufffd")
    assert _stream(tok, [first_byte]) == ["", tok.decode([first_byte])]


def test_special_tokens_kept_on_request(tok):
    ids = [*tok.encode("Paris."), 2]
    assert "".join(_stream(tok, ids)) == "Paris."
    assert "".join(_stream(tok, ids, skip_special_tokens=False)) == "Paris.<|im_end|>"


# ---- stop strings ----


def test_find_stop():
    assert find_stop("Hello world", ["world"]) == 6
    assert find_stop("Hello world", ["xyz"]) is None
    assert find_stop("Hello world", []) is None
    assert find_stop("Hello world", [""]) is None
    assert find_stop("a STOP b END", ["END", "STOP"]) == 2  # the earliest, not the first listed
    assert find_stop("Hello world", ["lo w", "o"], start=4) == 3  # both new: "lo w" begins first


def test_find_stop_searches_only_what_new_text_can_complete():
    # "world" ends before start=11: it was searched (and found) earlier, not again
    assert find_stop("Hello world and more", ["world"], start=11) is None
    # the stop straddles the old/new boundary: still found
    assert find_stop("Hello world", ["world"], start=9) == 6


def test_find_stop_incrementally_equals_a_full_search():
    """Fed in chunks, as tokens come: each call, searching only near the new text, finds what
    a search of the whole text so far finds (until the first hit, where the engine stops)."""
    rng = random.Random(1)
    hits = 0
    for _ in range(500):
        text = "".join(rng.choice("ab c\n") for _ in range(rng.randint(0, 30)))
        stops = ["".join(rng.choice("ab c\n") for _ in range(rng.randint(1, 4)))
                 for _ in range(rng.randint(1, 3))]
        found, end = None, 0
        while found is None and end < len(text):
            start, end = end, min(len(text), end + rng.randint(1, 4))
            found = find_stop(text[:end], stops, start)
            everywhere = [i for i in (text[:end].find(s) for s in stops) if i != -1]
            assert found == (min(everywhere) if everywhere else None), (text[:end], stops)
        hits += found is not None
    assert hits > 100


def test_stop_holdback():
    assert stop_holdback("Hello wor", ["world"]) == 3
    assert stop_holdback("Hello", ["world"]) == 0
    assert stop_holdback("Hello w", ["wxyz", "lo wo", "w"]) == 4  # the longest prefix counts
    assert stop_holdback("the end", ["end"]) == 0  # a whole stop string is find_stop's business
    assert stop_holdback("ab", ["abc"]) == 2
    assert stop_holdback("", ["abc"]) == 0
    assert stop_holdback("abc", []) == 0


def test_streaming_with_stops_never_shows_a_stop_string():
    """find_stop + stop_holdback as the engine uses them: what was shown is a prefix of the
    final, cut text, and never contains a stop string."""
    rng = random.Random(2)
    for _ in range(300):
        text = "".join(rng.choice("xyz ") for _ in range(rng.randint(0, 40)))
        stops = ["".join(rng.choice("xyz ") for _ in range(rng.randint(2, 4)))
                 for _ in range(2)]
        shown, end, cut = "", 0, None
        while cut is None and end < len(text):
            start, end = end, min(len(text), end + rng.randint(1, 3))
            cut = find_stop(text[:end], stops, start)
            visible = text[:cut] if cut is not None else text[:end - stop_holdback(text[:end],
                                                                                  stops)]
            assert visible.startswith(shown)
            shown = visible
        final = text[:cut] if cut is not None else text  # at the end, the hold-back is shown
        assert final.startswith(shown) and not any(s in final for s in stops), (text, stops)
