"""spotrun trainer: preemption-safe checkpoint/resume for PyTorch training loops.

Importing this package is cheap: it pulls in neither torch nor kopf. The operator <->
trainer contract is :mod:`spotrun_api.contract`, which both sides import directly.
"""

import time as _time

# When the package was first imported: the end of the ``start`` restart phase (phases.py).
IMPORTED_AT: float = _time.time()
