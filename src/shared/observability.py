"""Logger and metrics, created once; everyone else imports them from here.

Structured JSON logs (Powertools Logger) carry `isolation_id`, `account_id` and `instance_id` once a
record is known (`logger.append_keys`). Nothing logs credentials or the API key: the API event is never
logged whole.
"""

from __future__ import annotations

from aws_lambda_powertools.logging import Logger
from aws_lambda_powertools.metrics import Metrics, MetricUnit

SERVICE = "ec2-isolation"

logger = Logger(service=SERVICE)
metrics = Metrics(namespace="Ec2Isolation", service=SERVICE)

__all__ = ["MetricUnit", "logger", "metrics"]
