"""Text ↔ token ids: the tokenizer, the chat template, and incremental detokenization.

`Tokenizer` wraps the checkpoint's Hugging Face tokenizer with the few calls the engine makes.
`IncrementalDetokenizer` turns one sequence's tokens into text as they are sampled, without ever
emitting text it would later have to take back. `find_stop` and `stop_holdback` are the two
pure functions the engine uses to cut the text at stop strings, and to hold back from a stream
the characters that may turn out to be the start of one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

ROLES = ("system", "user", "assistant", "tool")
# Tokens of the prompt decoded in front of the first completion tokens. Some tokenizers decode a
# token differently at the start of a text (SentencePiece drops the leading space of "▁Paris");
# with a little context before it, the completion's first word keeps its space (as in vLLM).
PROMPT_CONTEXT_TOKENS = 5


class Tokenizer:
    """The checkpoint's tokenizer (`transformers.AutoTokenizer`), as the engine uses it.

    Attributes:
        hf_tokenizer: the wrapped transformers tokenizer, for anything not covered here.
        eos_token_ids: the ids that end a sequence: the tokenizer's eos token, plus those of
            `generation_config.json` (chat models often list several, e.g. Llama-3's
            `<|eot_id|>` besides `<|end_of_text|>`).
        vocab_size: the number of tokens the tokenizer knows, added tokens included (the
            model's embedding may have more rows, padded to a round number).
    """

    def __init__(self, model_dir: str) -> None:
        from transformers import AutoTokenizer

        self.hf_tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self._rust_decode = _plain_rust_decode(self.hf_tokenizer)
        self.eos_token_ids: tuple[int, ...] = _eos_token_ids(self.hf_tokenizer, model_dir)
        self.vocab_size: int = len(self.hf_tokenizer)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with the tokenizer's default special tokens (e.g. BOS), as vLLM."""
        return self.hf_tokenizer.encode(text, add_special_tokens=True)

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `token_ids`. No clean-up of tokenization spaces (" ." -> "."): streamed text
        could not take that back, and `decode` must agree with the streamed text."""
        if self._rust_decode is not None:  # the same text, at half the cost (per step, per seq)
            return self._rust_decode(list(token_ids), skip_special_tokens=skip_special_tokens)
        return self.hf_tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens,
                                        clean_up_tokenization_spaces=False)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            ) -> list[int]:
        """Prompt token ids for a conversation, rendered with the checkpoint's chat template.

        The template is rendered to text and then encoded without adding special tokens: the
        template writes its own (BOS, role markers), as vLLM does.
        """
        _check_messages(messages)
        if not self.hf_tokenizer.chat_template:
            raise ValueError("messages cannot be used: this model's tokenizer has no chat "
                             "template; give a plain text prompt instead")
        text = self.hf_tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        return self.hf_tokenizer.encode(text, add_special_tokens=False)


def _plain_rust_decode(hf_tokenizer):
    """The Rust tokenizer's `decode`, where transformers' `decode` (with no clean-up) is exactly
    that call under Python layers that cost as much again; None for a tokenizer class that
    overrides either step (its own decode then stays in charge)."""
    owners = {name: next((c.__name__ for c in type(hf_tokenizer).__mro__ if name in c.__dict__),
                         None) for name in ("decode", "_decode")}
    plain = (owners["decode"] == "PreTrainedTokenizerBase"
             and owners["_decode"] in ("TokenizersBackend", "PreTrainedTokenizerFast"))
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    return backend.decode if plain and backend is not None else None


def _check_messages(messages: object) -> None:
    """Raise ValueError naming what is wrong unless `messages` is a usable conversation."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"messages={messages!r} is invalid: must be a non-empty list of "
                         "{'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}]={m!r} is invalid: must be a dict with 'role' and "
                             "'content'")
        if m.get("role") not in ROLES:
            raise ValueError(f"messages[{i}]['role']={m.get('role')!r} is invalid: must be one "
                             f"of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}]['content']={m.get('content')!r} is invalid: must "
                             "be a string")


def _eos_token_ids(hf_tokenizer, model_dir: str) -> tuple[int, ...]:
    """The tokenizer's eos id, then generation_config.json's (an int or a list), deduplicated."""
    ids = [hf_tokenizer.eos_token_id]
    path = os.path.join(model_dir, "generation_config.json")
    if os.path.isfile(path):
        with open(path) as f:
            eos = json.load(f).get("eos_token_id")
        ids += eos if isinstance(eos, list) else [eos]
    return tuple(dict.fromkeys(i for i in ids if isinstance(i, int)))


class IncrementalDetokenizer:
    """One sequence's text, grown a token at a time; `add` returns only what is new.

    Decoding token by token and concatenating is wrong in two ways: a character may be spread
    over several byte-level tokens (an emoji is often 2–4 of them), and a token's text may
    depend on the tokens before it (SentencePiece's leading space). So each step decodes a small
    window, `token_ids[prefix_offset:]`, and emits only what it adds to the already emitted
    `token_ids[prefix_offset:read_offset]` (the technique of TGI and vLLM). While the window's
    text ends in U+FFFD, a character is still incomplete: nothing is emitted and the window
    grows until it completes.

    What holds: the deltas of `add` and `flush` join to `text`, and emitted text is never
    revised. Without prompt context, and with it for byte-level tokenizers (GPT-2 style:
    Llama-3, Qwen, SmolLM2), `text` equals `tokenizer.decode(completion_ids)`; a SentencePiece
    completion decoded after its prompt keeps the leading space of its first word. Special
    tokens are skipped unless `skip_special_tokens=False`.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: Sequence[int] = (),
                 skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        context = list(prompt_token_ids[-PROMPT_CONTEXT_TOKENS:])
        if self._decode(context).endswith("\ufffd"):
            context = []  # the prompt ends inside a character: no clean boundary to build on
        self.token_ids: list[int] = context  # the prompt's tail, then the completion
        self.prefix_offset = 0  # the window to decode starts here
        self.read_offset = len(context)  # text of token_ids[:read_offset] has been emitted
        self.text = ""  # the completion text emitted so far

    def _decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, token_id: int) -> str:
        """Append a sampled token; return the text it completes ("" while held back)."""
        self.token_ids.append(token_id)
        return self._emit(final=False)

    def flush(self) -> str:
        """End of the sequence: emit whatever is held back (an incomplete character as U+FFFD)."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        prefix_text = self._decode(self.token_ids[self.prefix_offset:self.read_offset])
        new_text = self._decode(self.token_ids[self.prefix_offset:])
        if len(new_text) <= len(prefix_text) or (new_text.endswith("\ufffd") and not final):
            return ""  # nothing new yet (a special token skipped), or a character incomplete
        delta = new_text[len(prefix_text):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.token_ids)
        self.text += delta
        return delta


# ---- stop strings ----


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> int | None:
    """Where the earliest stop string in `text` begins, or None; the text is cut there.

    Only text from `start` on is new (the caller searched the rest on earlier calls), so only a
    match that ends at or after `start` can be new: the search begins `max(len(stop)) - 1`
    characters before it, and each call costs O(new text), not O(text).
    """
    stops = [s for s in stops if s]
    if not stops:
        return None
    begin = max(0, start - max(len(s) for s in stops) + 1)
    hits = [i for i in (text.find(s, begin) for s in stops) if i != -1]
    return min(hits) if hits else None


def stop_holdback(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of `text` to hold back from a stream: the longest suffix
    that is the beginning of a stop string, which the next tokens may complete (and then it must
    never have been shown)."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest
