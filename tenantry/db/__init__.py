"""The database layer: SQLAlchemy 2 async (asyncpg on PostgreSQL, aiosqlite for `tenantry dev`)."""
