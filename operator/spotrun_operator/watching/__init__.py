"""Floor 7, watching: the watch-fed caches a reconcile reads (no GET or LIST in steady
state), when they are synced, what only the watch saw, and ``observe`` (pure), which turns
them into an ``Observed`` run."""
