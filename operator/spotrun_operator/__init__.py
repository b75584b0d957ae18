"""spotrun operator: runs TrainingRuns as gangs of PyTorchJob attempts on spot GPUs.

Only :mod:`spotrun_operator.kube` talks to the Kubernetes API and only
:mod:`spotrun_operator.handlers` knows about kopf; every decision is a pure function in
``builders``, ``classify``, ``status`` and ``reconcile`` that unit tests call directly.
"""

__version__ = "0.1.0"
