"""sentence-transformers integration: ``SentenceTransformerTrainer`` is a Hugging Face
``Trainer``, so :class:`~spotrun_trainer.integrations.hf.SpotrunCallback` is the whole
integration::

    spot = SpotrunCallback()
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds,
                                         loss=MultipleNegativesRankingLoss(model),
                                         callbacks=[spot])
    trainer.train(resume_from_checkpoint=spot.resume_path())

A committed checkpoint is a loadable model folder (``modules.json``, the modules' folders,
tokenizer) plus the Trainer's state. A whole workload built on it (MPNet from a config,
BEIR data, nDCG@10 model selection, early stop): ``examples/mpnet_ablations/``.
"""

from __future__ import annotations

from spotrun_trainer.integrations.hf import SpotrunCallback

__all__ = ["SpotrunCallback"]
