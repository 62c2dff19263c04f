"""The engine host's local object cache: table data fetched from an `ObjectSource` onto the encrypted NVMe mount."""

from engine_host.cache.object_cache import CacheWriteFailed, ObjectCache

__all__ = ["CacheWriteFailed", "ObjectCache"]
