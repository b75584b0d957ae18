"""Floor 1, the facts every decision reads (pure): names, labels and times; the
configuration; the signals a node and a pod show; the podTemplate merge; capacity pools'
interruption rates."""
