"""The engine host's local object cache: table data fetched from an `ObjectSource` onto the encrypted NVMe mount."""

from engine_host.cache.manager import CacheManager, CacheWriteFailed

__all__ = ["CacheManager", "CacheWriteFailed"]
