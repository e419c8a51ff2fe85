"""Deploy tests: the moto server process and artefact helpers live in `tests/deploy/aws.py` (reusable)."""

from tests.deploy.aws import aws_env, moto, moto_server  # noqa: F401  (fixtures)
