"""Where table data comes from: Parquet folders read in place, or an object store through the local cache.

`table_sources.py` is what the engine host is handed (`LocalFolderTables`, `ObjectStoreTables`);
`parquet_tables.py` registers a folder's tables, `cached_tables.py` an object store's, and
`object_cache.py` keeps the fetched objects on the encrypted NVMe mount.
"""

from engine_host.data.object_cache import CacheWriteFailed, ObjectCache

__all__ = ["CacheWriteFailed", "ObjectCache"]
