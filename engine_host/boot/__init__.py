"""`hd engine boot`: prove this instance is the provisioned environment, then unlock its encrypted NVMe cache.

Order: instance identity (IMDSv2) -> environment binding (region, account, VPC, security groups, KMS
key) -> LUKS2 cache volume keyed by a KMS data key. Every external command runs through `runner`.
"""
