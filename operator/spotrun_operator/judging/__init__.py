"""Floor 4, judging one attempt (pure): the evidence its pods and nodes keep, the verdict
on it, and the verdict on a spec that cannot be run."""
