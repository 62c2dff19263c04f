"""Moved to engine_host/pgcompat/catalog/ (relations, views, rewrite/, responder); kept while importers move."""

from engine_host.pgcompat.catalog import CatalogResponder, Visibility, parseable_catalog_text
from engine_host.pgcompat.catalog.relations import _SPECS

__all__ = ["_SPECS", "CatalogResponder", "Visibility", "parseable_catalog_text"]
