"""Alembic migrations of Herald's PostgreSQL schema."""
