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

import numpy as np
import pandas as pd

from emomix.data.schema import is_missing
from emomix.errors import ConfigError

#: The speaker of an utterance whose speaker nobody gave (inference without ``speaker``).
UNKNOWN_SPEAKER = "<unknown speaker>"
#: What ``DialogueContext.pool`` may be.
CONTEXT_POOLS = ("all", "turn")
#: Speaker ids that are not names, so they are never written into a transcript (compared lower-cased).
ANONYMOUS_SPEAKERS = frozenset({"", "unknown", UNKNOWN_SPEAKER})


@dataclass(frozen=True)
class DialogueContext:
    """``turns``: how many preceding turns follow the utterance (at least 1); ``speakers``:
    prefix every turn with its speaker (``"Ross: ..."``), so the encoder can tell whether the
    previous turn was the same person's; ``pool``: which tokens a model's token pooling reads —
    ``"all"`` (the turn and its context alike) or ``"turn"`` (the turn's own tokens: the context
    reaches them only through the encoder's attention, where its layers are fine-tuned)."""

    turns: int = 2
    speakers: bool = True
    pool: str = "all"

    def __post_init__(self) -> None:
        if isinstance(self.turns, bool) or not isinstance(self.turns, int) or self.turns < 1:
            raise ConfigError(f"context.turns must be a whole number of at least 1, got {self.turns!r}")
        if not isinstance(self.speakers, bool):
            raise ConfigError(f"context.speakers must be true or false, got {self.speakers!r}")
        if self.pool not in CONTEXT_POOLS:
            raise ConfigError(f"context.pool must be one of {', '.join(CONTEXT_POOLS)}, got {self.pool!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> DialogueContext | None:
        """None for no context; unknown keys are errors."""
        if values is None:
            return None
        if not isinstance(values, Mapping):
            raise ConfigError(f"context must be a mapping such as {{turns: 2, speakers: true}}, got {values!r}")
        unknown = sorted(set(values) - {"turns", "speakers", "pool"})
        if unknown:
            raise ConfigError(f"context: unknown key(s) {unknown}; known: ['pool', 'speakers', 'turns']")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def with_dialogue_context(table: pd.DataFrame, context: DialogueContext, separator: str) -> pd.DataFrame:
    """A copy of ``table`` whose ``text`` holds each utterance followed by its preceding turns.

    Turns are ordered by ``turn`` inside ``dialogue_id`` (:func:`dialogue_order`); an utterance without a dialogue id or
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
    turn_numbers: list[Any] = list(out["turn"]) if "turn" in out else [None] * len(out)
    in_dialogue: set[int] = set()
    for members in dialogue_order(out):
        members = [position for position in members if not is_missing(turn_numbers[position])]
        in_dialogue.update(members)
        said = [spoken(position) for position in members]
        for index, position in enumerate(members):
            own = said[index]
            if own is None:
                continue
            before = [text for text in reversed(said[:index]) if text is not None][: context.turns]
            new_texts[position] = separator.join([own, *before])
    for position in range(len(out)):  # no dialogue or no turn number: the utterance alone
        if position not in in_dialogue and (own := spoken(position)) is not None:
            new_texts[position] = own
    out["text"] = new_texts
    return out


def dialogue_order(table: pd.DataFrame) -> list[list[int]]:
    """The row positions of ``table`` grouped by ``dialogue_id``, one list per dialogue (dialogues
    in sorted id order), each in turn order: by ``turn``, a row without one after the numbered
    rows, ties by ``utt_id``. Rows without a ``dialogue_id`` are left out.

    The one rule for a conversation's order: conversation batches
    (:func:`emomix.train.data.dialogues_of`) and dialogue context in transcripts
    (:func:`with_dialogue_context`) both follow it."""
    if "dialogue_id" not in table.columns or table.empty:
        return []
    frame = pd.DataFrame(
        {
            "dialogue": [None if is_missing(d) else d for d in table["dialogue_id"]],
            "turn": pd.to_numeric(table["turn"], errors="coerce").to_numpy() if "turn" in table.columns else 0,
            "utt": table["utt_id"].astype(str).to_numpy() if "utt_id" in table.columns else "",
            "position": np.arange(len(table)),
        }
    )
    frame = frame[frame["dialogue"].notna()].sort_values(["dialogue", "turn", "utt"], kind="stable", na_position="last")
    return [group["position"].tolist() for _, group in frame.groupby("dialogue", sort=True)]
