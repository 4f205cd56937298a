"""Metadata in SQL (SQLAlchemy 2; SQLite in WAL mode by default), scoped by namespace."""
