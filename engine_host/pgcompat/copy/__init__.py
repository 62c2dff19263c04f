"""COPY ... TO STDOUT / FROM STDIN: the statement's syntax and options, and its text, csv and binary formats."""
