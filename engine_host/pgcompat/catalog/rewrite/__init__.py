"""Recognising catalog queries and rewriting them as DuckDB SQL over the hd_pg views, one concern per module.

`recognise` decides whether a statement is a catalog query at all; `query` walks its AST and hands each
node to the rule that rewrites it (`casts`, `operators`, `arrays`, `functions`, `output_names`);
`parameters` reads the types its `$n` are cast to; `session` and `visibility` fill in a session's
values and restrict the answer to the relations it may see.
"""
