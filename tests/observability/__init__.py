"""Observability and operations: metrics, health, Prometheus, systemd, logs, config, lifecycle."""
