"""sentence-transformers integration: ``SentenceTransformerTrainer`` is a Hugging Face
``Trainer``, so :class:`~spotrun_trainer.integrations.hf.SpotrunCallback` is the whole
integration::

    spot = SpotrunCallback()
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds,
                                         loss=MultipleNegativesRankingLoss(model),
                                         callbacks=[spot])
    trainer.train(resume_from_checkpoint=spot.resume_path())

Plus what an MPNet contrastive run needs to start from scratch without the hub: a
word-level tokenizer built in memory (:func:`word_level_tokenizer`) and an MPNet-style
``SentenceTransformer`` from an ``MPNetConfig`` with random weights
(:func:`mpnet_from_config`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import MPNetConfig, MPNetModel, PreTrainedTokenizerFast

from spotrun_trainer.integrations.hf import SpotrunCallback

__all__ = ["SPECIAL_TOKENS", "SpotrunCallback", "mpnet_from_config", "word_level_tokenizer"]

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
