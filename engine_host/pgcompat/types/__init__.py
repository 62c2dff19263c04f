"""PostgreSQL types: the one table of them (table.py) that the wire and the catalog both read."""
