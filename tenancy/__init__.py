"""Who is calling and what they used: API keys, the usage ledger, feedback.

Ray-free, like `execution/`. State that must outlive a process lives in a database
through SQLAlchemy (`tenancy/db.py`): SQLite by default, PostgreSQL on clusters, the
schema owned by Alembic migrations (`tenancy/migrations/`). The request path never waits
on it: keys are read from an in-memory copy refreshed in the background, ledger records
are written in batches by a background thread.
"""
