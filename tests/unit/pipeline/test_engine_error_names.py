"""Engine error messages never name the engine's own catalogs (whatever their number) or aliases."""

from __future__ import annotations

import duckdb
import pytest

from engine_host.pipeline.errors import from_engine_error


@pytest.mark.parametrize("catalog", ["hd_data", "hd_keys", "hd_native_7", "hd_masks_12", "memory"])
def test_a_missing_table_is_named_as_the_client_wrote_it(catalog: str) -> None:
    error = from_engine_error(duckdb.CatalogException(
        f'Catalog Error: Table with name "{catalog}.pii.changing" does not exist because schema does not exist.'))
    assert (error.sqlstate, error.message) == ("42P01", 'relation "pii.changing" does not exist')


@pytest.mark.parametrize("catalog", ["hd_native_3", "hd_masks_4", "\"hd_native_3\""])
def test_other_engine_errors_drop_internal_catalog_names(catalog: str) -> None:
    error = from_engine_error(duckdb.BinderException(
        f'Binder Error: Referenced column "x" not found in FROM clause of {catalog}.crm.customers AS __hd_src'))
    assert "hd_" not in error.message and "__hd_src" not in error.message
    assert "crm.customers" in error.message
