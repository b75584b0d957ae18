"""spotrun operator: runs TrainingRuns as gangs of PyTorchJob attempts on spot GPUs.

One subpackage per floor (docs/operator.md, "Architecture"): ``facts``, ``model``,
``judging`` and ``decisions`` are pure and unit tests call them directly, as ``money`` is
but for its AWS client and refresh thread;
``telemetry``, ``watching`` and ``kubeio`` are the process's I/O (only
:mod:`spotrun_operator.kubeio` talks to the Kubernetes API: ``calls``, ``kube``,
``leases``); ``runner``, ``handlers`` and ``main`` sit on top (kopf: there and in
``kubeio.leader``).
"""

__version__ = "0.1.0"
