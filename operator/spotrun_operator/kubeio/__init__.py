"""Floor 8, Kubernetes I/O and leadership: the only calls to the API (``kube``), the
events' correlator and writer thread, and the Lease election."""
