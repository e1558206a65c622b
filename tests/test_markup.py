"""One thinking vocabulary: what capability detection recognises, the stream parser
separates, and the other way round."""

from __future__ import annotations

import pytest

from manager.chat.thinking import ThinkingParser, split_thinking
from manager.markup import THINKING_TAGS, TagPair
from manager.models.capabilities import from_files
from manager.models.capabilities.templates import is_markup

CONFIG = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 4, "vocab_size": 1000, "intermediate_size": 128}
IDS = [pair.open for pair in THINKING_TAGS]
UNKNOWN = TagPair("<ponder>", "</ponder>")


def detected(pair: TagPair) -> tuple[bool, bool]:
    """(from a chat template, from the vocabulary alone)."""
    template = ("{% for m in messages %}{{ m.content }}{% endfor %}"
                f"{{{{ '{pair.open}' }}}}{{{{ m.reasoning }}}}{{{{ '{pair.close}' }}}}")
    by_template = from_files(CONFIG, {"chat_template": template}).thinking
    by_vocab = from_files(CONFIG, None, vocab_tokens=[pair.open, pair.close]).thinking
    return by_template, by_vocab


def parsed(pair: TagPair) -> tuple[str, str]:
    return split_thinking(f"{pair.open}Let me see.{pair.close}Four.")


@pytest.mark.parametrize("pair", THINKING_TAGS, ids=IDS)
def test_every_detected_pair_is_parsed(pair: TagPair) -> None:
    assert detected(pair) == (True, True)
    assert parsed(pair) == ("Let me see.", "Four.")


@pytest.mark.parametrize("pair", THINKING_TAGS, ids=IDS)
def test_every_pair_can_be_read_from_a_tokenizer_file(pair: TagPair) -> None:
    # detect() keeps only markup-looking tokens of tokenizer.json: all of ours must pass
    assert is_markup(pair.open) and is_markup(pair.close)


def test_a_pair_outside_the_vocabulary_is_neither_detected_nor_parsed() -> None:
    assert detected(UNKNOWN) == (False, False)
    assert parsed(UNKNOWN) == ("", "<ponder>Let me see.</ponder>Four.")


def test_the_first_pair_is_the_one_a_prompt_opens() -> None:
    first = THINKING_TAGS[0]
    assert first == TagPair("<think>", "</think>")
    parser = ThinkingParser(started_in_thinking=True)
    parser.feed(f"Let me see.{first.close}Four.")
    parser.finish()
    assert (parser.thinking, parser.answer) == ("Let me see.", "Four.")


def test_pairs_are_unique_and_well_formed() -> None:
    opens = [pair.open for pair in THINKING_TAGS]
    closes = [pair.close for pair in THINKING_TAGS]
    assert len(set(opens)) == len(opens) and len(set(closes)) == len(closes)
    assert all(pair.open != pair.close for pair in THINKING_TAGS)
    assert not set(opens) & set(closes)
