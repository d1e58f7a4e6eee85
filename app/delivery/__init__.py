"""Delivery: claiming queued messages, sending them through providers, recording outcomes."""
