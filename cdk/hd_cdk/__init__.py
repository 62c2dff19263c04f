"""Hardened Duck's CDK app: one construct per concern (network, keys, storage, ...), stacks only compose."""
