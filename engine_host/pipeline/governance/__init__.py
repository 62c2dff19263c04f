"""The pure SQL half of governance: parse and guard, table extract, columns read, policy rewrite, transpile.

No statement reaches DuckDB unless it went through `parse_statement` -> `check_statement` ->
`extract_tables` -> `apply_policies` -> `to_duckdb`; nothing a policy hides can be read back.
"""
