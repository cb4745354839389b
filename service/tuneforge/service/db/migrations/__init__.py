"""Alembic migrations of the service's database (SQLite and PostgreSQL); run them through ``db/migrate.py``."""
