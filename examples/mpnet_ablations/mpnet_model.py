"""The MPNet bi-encoder of the three ablations: Transformer -> mean pooling -> projection.

Two ways to get the backbone:

- from an ``MPNetConfig`` with random (seeded) weights and a word-level tokenizer built in
  memory over the data set's words (:func:`mpnet_from_config`): nothing downloaded, what
  the tests and the CPU-sized runs use;
- ``--model microsoft/mpnet-base`` (or a local folder holding it): the pretrained backbone
  and its tokenizer, through sentence-transformers' ``Transformer`` module, which reads the
  hub (or ``HF_HOME``'s cache) the usual way. Not run here: no hub access.

The projection is sentence-transformers' ``Dense`` module (linear, no activation) on the
pooled embedding, as the plan's ``--output_dim``; the ``frozen`` ablation trains only it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import MPNetConfig, MPNetModel, PreTrainedTokenizerFast

# MPNet's special tokens (RoBERTa style); "<pad>" gets id 0.
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<mask>")


def word_level_tokenizer(words: Sequence[str], model_max_length: int) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over ``words`` (special tokens first), wrapping each
    text as ``<s> … </s>``; built in memory, nothing downloaded."""
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])],
    )
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        model_max_length=model_max_length,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        unk_token="<unk>",
        mask_token="<mask>",
    )


def mpnet_from_config(
    folder: str | Path,
    config: MPNetConfig,
    tokenizer: PreTrainedTokenizerFast,
    *,
    pooling: str = "mean",
    seed: int = 0,
) -> SentenceTransformer:
    """An MPNet ``SentenceTransformer`` with random weights (seeded): the backbone and the
    tokenizer are written to ``folder`` and loaded from there (sentence-transformers'
    ``Transformer`` module loads from a path), so no hub download happens."""
    folder = Path(folder)
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(seed)
    MPNetModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    backbone = Transformer(str(folder), max_seq_length=tokenizer.model_max_length)
    dim = backbone.get_embedding_dimension()
    return SentenceTransformer(modules=[backbone, Pooling(dim, pooling_mode=pooling)])


def pretrained_mpnet(name: str, max_seq_length: int) -> SentenceTransformer:
    """``name`` (a hub id such as ``microsoft/mpnet-base`` or a local folder) with mean
    pooling; downloads through the hub client unless ``HF_HOME`` already holds it."""
    backbone = Transformer(name, max_seq_length=max_seq_length)
    dim = backbone.get_embedding_dimension()
    return SentenceTransformer(modules=[backbone, Pooling(dim, pooling_mode="mean")])


def add_projection(model: SentenceTransformer, out_features: int, seed: int) -> Dense:
    """Append a linear ``Dense`` projection (seeded init) to the pooled embedding."""
    dim = model.get_embedding_dimension()
    assert dim is not None, "the pooling module sets the embedding dimension"
    torch.manual_seed(seed + 1)
    dense = Dense(dim, out_features, activation_function=None)
    model.append(dense)
    return dense


def freeze_encoder(model: SentenceTransformer) -> int:
    """Freeze every module but the projection (the last one); the trainable parameter count."""
    *encoder, projection = list(model.children())
    for module in encoder:
        module.requires_grad_(False)
    return sum(p.numel() for p in projection.parameters() if p.requires_grad)
