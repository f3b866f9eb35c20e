"""Dialogue context inside a transcript: each turn's text followed by the turns before it.

A text encoder sees one string per utterance. With :func:`with_dialogue_context` that string is
the utterance itself, then its ``turns`` predecessors in the same dialogue, most recent first, so
an encoder that truncates long inputs drops the oldest context, never the utterance::

    Ross: Or we could go to the bank. [SEP] Monica: What? [SEP] Phoebe: He's totally lost it.

This is the input side of the context models that fine-tune a transformer over the preceding
turns (EmoBERTa, CoMPM); MiSTER-E instead mixes finished utterance vectors. Only the ``text``
column changes, so the feature store keys the new strings as inputs of their own, and the
table's transcripts, labels and ids stay as they were.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from emomix.errors import ConfigError

#: The speaker of an utterance whose speaker nobody gave (inference without ``speaker``).
UNKNOWN_SPEAKER = "<unknown speaker>"
#: Speaker ids that are not names, so they are never written into a transcript (compared lower-cased).
ANONYMOUS_SPEAKERS = frozenset({"", "unknown", UNKNOWN_SPEAKER})


@dataclass(frozen=True)
class DialogueContext:
    """``turns``: how many preceding turns follow the utterance (at least 1); ``speakers``:
    prefix every turn with its speaker (``"Ross: ..."``), so the encoder can tell whether the
    previous turn was the same person's."""

    turns: int = 2
    speakers: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.turns, bool) or not isinstance(self.turns, int) or self.turns < 1:
            raise ConfigError(f"context.turns must be a whole number of at least 1, got {self.turns!r}")
        if not isinstance(self.speakers, bool):
            raise ConfigError(f"context.speakers must be true or false, got {self.speakers!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> DialogueContext | None:
        """None for no context; unknown keys are errors."""
        if values is None:
            return None
        if not isinstance(values, Mapping):
            raise ConfigError(f"context must be a mapping such as {{turns: 2, speakers: true}}, got {values!r}")
        unknown = sorted(set(values) - {"turns", "speakers"})
        if unknown:
            raise ConfigError(f"context: unknown key(s) {unknown}; known: ['speakers', 'turns']")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def with_dialogue_context(table: pd.DataFrame, context: DialogueContext, separator: str) -> pd.DataFrame:
    """A copy of ``table`` whose ``text`` holds each utterance followed by its preceding turns.

    Turns are ordered by ``turn`` inside ``dialogue_id``; an utterance without a dialogue id or
    turn number keeps its text (plus its speaker when ``speakers``). An utterance without text
    (None or blank) keeps it unchanged, so the encoders' empty-text handling still applies to it;
    a predecessor without text is skipped. ``separator`` sits between turns (the encoder's own
    separator token, e.g. ``" [SEP] "``).
    """
    if not separator.strip():
        raise ConfigError("the context separator must be visible text (e.g. ' [SEP] ')")
    out = table.copy()
    texts = list(out["text"])
    speakers = list(out["speaker"])

    def spoken(position: int) -> str | None:
        text = texts[position]
        if text is None or not isinstance(text, str) or not text.strip():
            return None
        text = text.strip()
        speaker = speakers[position]
        if context.speakers and isinstance(speaker, str) and speaker.strip().lower() not in ANONYMOUS_SPEAKERS:
            return f"{speaker.strip()}: {text}"
        return text

    new_texts: list[Any] = list(texts)
    dialogues: list[Any] = list(out["dialogue_id"]) if "dialogue_id" in out else [None] * len(out)
    turn_numbers: list[Any] = list(out["turn"]) if "turn" in out else [None] * len(out)
    grouped: dict[Any, list[tuple[int, int]]] = {}
    for position, (dialogue, turn) in enumerate(zip(dialogues, turn_numbers)):
        if _missing(dialogue) or _missing(turn):
            own = spoken(position)
            if own is not None:
                new_texts[position] = own
            continue
        grouped.setdefault(dialogue, []).append((int(turn), position))
    for members in grouped.values():
        members.sort()
        said = [spoken(position) for _, position in members]
        for index, (_, position) in enumerate(members):
            own = said[index]
            if own is None:
                continue
            before = [text for text in reversed(said[:index]) if text is not None][: context.turns]
            new_texts[position] = separator.join([own, *before])
    out["text"] = new_texts
    return out


def _missing(value: Any) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))
