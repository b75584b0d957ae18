"""Floor 5, one decision (pure): ``reconcile.decide`` maps an ``Observed`` run to a
``Decision`` (the status written and the actions)."""
