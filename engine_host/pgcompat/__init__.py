"""PostgreSQL compatibility: the type table, value encoding and decoding, and the pg_catalog answers."""
