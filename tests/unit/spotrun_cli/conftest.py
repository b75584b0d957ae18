"""The CLI's AWS-facing tests share the operator's AWS fixtures (moto on loopback)."""

from aws_fixtures import aws_env, moto_server, spot_history  # noqa: F401 (fixtures)
