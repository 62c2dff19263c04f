"""Shadow mode's core: a customer's query set, the comparison of two results, and the replay report.

`query_set` turns an upload (a SQL file or a JSONL query history) into statements that are all
read-only; `compare` reduces each side's result to a bounded digest and gives a verdict; `report`
sums the verdicts and timings of a replay. The replay orchestration calls these; nothing here talks
to a database.
"""
