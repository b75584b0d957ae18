"""User-facing tools for spotrun: the TorchX scheduler ``spotrun`` and the ``kubectl spotrun``
plugin. Both read and write TrainingRuns through the Kubernetes API with the user's
kubeconfig only; neither needs access to the operator.

The AppDef -> TrainingRun translation (``translate``), the status views (``runview``,
``ledger``) and the log-following plan (``follow``) are pure; ``kubeapi`` holds the I/O.
"""

__version__ = "0.1.0"
