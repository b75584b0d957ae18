"""spotrun trainer: preemption-safe checkpoint/resume for PyTorch training loops.

Importing this package is cheap: it pulls in neither torch nor kopf, so the operator can
import :mod:`spotrun_trainer.contract` without the training stack.
"""
