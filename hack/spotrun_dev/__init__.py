"""spotrun-dev: the local control plane and the EKS behaviours spotrun must survive.

Tests and `make demo` share this package: it brings up a real kube-apiserver,
controller-manager, scheduler and the Kubeflow training operator (built from Go modules)
on fake kwok nodes shaped like an EKS spot p4d.24xlarge node group, and injects what AWS,
the Node Termination Handler, Karpenter and the kubelet really do to those nodes and pods.
"""
