"""Floor 3, the operator's model of a run (pure): its identity (``RunRef``), what was
observed, the decision and its actions; the children a spec builds; reducers over the typed
status."""
