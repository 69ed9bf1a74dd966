"""stream-sync: keep people in SaaS tools in step with segments and attributes from Kafka."""

__version__ = "0.1.0"
