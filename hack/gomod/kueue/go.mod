// Wrapper module: builds Kueue's manager from sigs.k8s.io/kueue. The module proxy here
// refuses the module's version list, so `go install ...@version` (which reads it for
// deprecations) fails; a wrapper with a pinned require and a go.sum builds offline.
module spotrun.dev/hack/kueue

go 1.26.0

require sigs.k8s.io/kueue v0.12.3
