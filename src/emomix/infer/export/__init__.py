"""ONNX export of emomix models, the exported graph's input/output contract, and a parity check.

A model takes a :class:`~emomix.models.inputs.Batch` (or a ``DialogueBatch``), a dataclass that
ONNX cannot carry, so :func:`export_onnx` wraps it in a thin module that takes flat tensors in a
fixed order and rebuilds the batch before calling the model. The order, names, dtypes and
shapes are written to a JSON file next to the model (the *I/O spec*, :func:`spec_path_for`), and
:func:`batch_feed` turns a batch into the input dict of an onnxruntime session from it.

Inputs of an utterance model, per modality present in the example batch (audio, text, video, in
that order), then per field present (in this order):

==========================  ===============================  =======
name                        shape                            dtype
==========================  ===============================  =======
``<m>_states``              batch × ``<m>_length`` × D       float32
``<m>_mask``                batch × ``<m>_length``           bool
``<m>_speech_mask``         batch × ``<m>_length``           bool
``<m>_special_tokens``      batch × ``<m>_length``           bool
``<m>_layer_states``        batch × K × ``<m>_length`` × D   float32
``<m>_pooled``              batch × P                        float32
==========================  ===============================  =======

A dialogue model takes ``<m>_states`` (batch × utterances × D, float32) per modality and
``dialogue_mask`` (batch × utterances, bool). ``batch``, ``<m>_length`` and ``utterances`` are
dynamic axes; D, K and P are fixed by the model. Masks are ONNX ``bool`` tensors (onnxruntime
takes numpy ``bool`` arrays; no uint8 conversion is needed). An input the exported graph never
reads (e.g. ``audio_speech_mask`` for ``early_fusion``) is dropped by the exporter; the spec
lists it under ``ignored_inputs`` and :func:`batch_feed` does not send it.

Outputs: ``logits`` (batch × C, or batch × utterances × C) and one ``aux_<name>`` per tensor of
``ModelOutput.aux`` whose first dimension is the batch (routing probabilities, gate weights,
expert logits, fallback flags), in the order the model returns them. ``aux_losses`` are training
terms and are not exported. Token–frame ``edges`` (a list of per-utterance tensors of varying
size) are not an input: a batch with edges cannot be the example. The Complementary models'
graph then spreads the content tokens uniformly over the frames (their ``graph="auto"``
fallback, which the predictor's batches get too; ``aux_graph_approximate`` is 1); a model built
with ``graph="edges"`` cannot run without edges and so does not export.

How export works: :func:`torch.onnx.export` with the TorchScript tracer (``dynamo=False``),
which keeps the padded axes of these models dynamic. Three PyTorch pieces do not trace well and
are swapped, during export only, for the same maths in plain tensor ops: ``nn.MultiheadAttention``
(its own forward freezes the sequence length into reshapes), and ``nn.LSTM``/``nn.GRU`` on packed
sequences (the exporter crashes when only the final state of a packed RNN is used). ``Where``
nodes that select between bool masks are rewritten through uint8, which onnxruntime's CPU kernel
needs. Then the graph is *verified*: onnxruntime and the unpatched PyTorch model run three random
batches with other batch sizes and lengths than the example (one of them 300 positions long),
and the outputs must agree within ``atol``.

The tracer records Python control flow and Python numbers computed from tensor values as
constants. Where such a value is fixed by the batch contract (every row has at least one valid
position, so "is any row empty?" is always False) the graph is still right; where it is not (a
Python branch on a tensor value, a loop over a batch's rows), verification fails and
:class:`ConfigError` names the model, the unsupported operator and the source lines the tracer
froze. The spec lists those lines under ``frozen_by_tracer``. Every registered model is written
in tensor ops that trace (the Complementary family's frame pooling and token–frame graph
included: a dense masked adjacency instead of per-utterance graphs), so all of them export.
With ``onnxscript`` installed the ``dynamo`` exporter (``torch.export``) is tried next; it
refuses data-dependent control flow outright.

Encoders: :func:`export_text_encoder` exports a transformers text encoder on its own
(``input_ids``, ``attention_mask`` → ``states`` and the stored hidden layers ``layer_<k>``, batch
and sequence axes dynamic, the tokenizer saved beside it) and checks it on real texts
(:func:`check_text_encoder_parity`); :class:`OnnxTextEncoder` runs it. Other encoders are not
graphs emomix can trace (:func:`encoder_export_blocker` says why).

The package: ``spec`` (the input/output contract and the I/O spec file), ``parity`` (running an
exported graph, random batches, parity checks, failure messages), ``fusion`` (fusion models),
``text_encoder`` (text encoders) and ``sweep`` (the check-all sweep over registered models).
Every public name is importable from ``emomix.infer.export``.
"""

from emomix.infer.export.fusion import ExportResult, export_onnx
from emomix.infer.export.parity import (
    LONG_VERIFICATION_LENGTH,
    OnnxModel,
    ParityBatchResult,
    ParityReport,
    check_parity,
    random_batch_like,
)
from emomix.infer.export.spec import (
    BATCH_AXIS,
    DEFAULT_OPSET,
    DIALOGUE_MASK,
    MASK_FIELDS,
    MODALITY_FIELDS,
    SPEC_FORMAT,
    UTTERANCE_AXIS,
    BatchWrapper,
    TensorSpec,
    batch_feed,
    flatten_batch,
    input_specs,
    load_spec,
    spec_path_for,
)
from emomix.infer.export.sweep import (
    CHECK_DIMS,
    CheckRow,
    check_all,
    example_batch_for,
    format_check_table,
)
from emomix.infer.export.text_encoder import (
    SEQUENCE_AXIS,
    TEXT_ENCODER_FORMAT,
    TEXT_OUTSIDE_THE_GRAPH,
    OnnxTextEncoder,
    TextEncoderExport,
    TextEncoderGraph,
    TextParityBatch,
    TextParityReport,
    check_text_encoder_parity,
    encoder_export_blocker,
    export_text_encoder,
)

__all__ = [
    "BATCH_AXIS",
    "CHECK_DIMS",
    "DEFAULT_OPSET",
    "DIALOGUE_MASK",
    "LONG_VERIFICATION_LENGTH",
    "MASK_FIELDS",
    "MODALITY_FIELDS",
    "SEQUENCE_AXIS",
    "SPEC_FORMAT",
    "TEXT_ENCODER_FORMAT",
    "TEXT_OUTSIDE_THE_GRAPH",
    "UTTERANCE_AXIS",
    "BatchWrapper",
    "CheckRow",
    "ExportResult",
    "OnnxModel",
    "OnnxTextEncoder",
    "ParityBatchResult",
    "ParityReport",
    "TensorSpec",
    "TextEncoderExport",
    "TextEncoderGraph",
    "TextParityBatch",
    "TextParityReport",
    "batch_feed",
    "check_all",
    "check_parity",
    "check_text_encoder_parity",
    "encoder_export_blocker",
    "example_batch_for",
    "export_onnx",
    "export_text_encoder",
    "flatten_batch",
    "format_check_table",
    "input_specs",
    "load_spec",
    "random_batch_like",
    "spec_path_for",
]
