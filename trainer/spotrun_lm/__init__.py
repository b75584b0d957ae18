"""spotrun_lm: the built-in language-model trainer, ``python -m spotrun_lm``.

A config-driven program on top of the trainer library (:mod:`spotrun_trainer`): a GPT-2
style causal LM or a contrastive token encoder, on token files or generated data, with DDP
or FSDP2, that the trainer image runs. The library never imports it; it is not part of the
``spotrun-trainer`` distribution (docs/trainer.md says what lives where).
"""
