"""Floor 6, telemetry: the run metrics, the work queue's and reconciles' health, the API
client's requests (Prometheus)."""
