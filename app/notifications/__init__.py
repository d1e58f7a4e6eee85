"""Notifications: the requests tenants make, and the messages they fan out into."""
