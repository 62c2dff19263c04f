"""The client matrix (issue 16): the same statements through each real client, engine host vs PostgreSQL 15."""
