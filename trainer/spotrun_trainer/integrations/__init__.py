"""Bring your own loop: spotrun's checkpoint commit protocol, stop handling and progress
reporting for training loops spotrun does not own.

- :mod:`.hf`: a ``TrainerCallback`` for Hugging Face ``Trainer`` (and every subclass,
  ``SentenceTransformerTrainer`` included).
- :mod:`.sentence_transformers`: the same callback, for ``SentenceTransformerTrainer``.
- :mod:`.loop`: the few lines a plain (nanoGPT-style) loop adds.

Both are thin adapters over :class:`spotrun_trainer.core.TrainerCore` (agreement, the
save / stop / exit-143 protocol, progress); :mod:`spotrun_trainer.commit` turns a folder
another framework wrote into a committed ``step-N``.

Importing this package imports nothing heavy; each module imports what it integrates with.
"""
