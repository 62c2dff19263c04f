// Calls the PostgreSQL JDBC driver's DatabaseMetaData methods and a few plain queries, printing one JSON
// line per call, so tests/e2e/test_jdbc_metadata.py can compare the engine's answers with PostgreSQL's.
//
// Usage: java -cp postgresql.jar:DIR MetadataProbe URL USER PASSWORD SCHEMA PARENT CHILD [visibility]
// Each line: {"call": name, "columns": [label...], "types": [java.sql.Types code...], "type_names": [...],
// "rows": [[value...]...], "ms": milliseconds the call took}
// for a ResultSet, {"call": name, "value": v} for a scalar, {"call": name, "error": sqlstate, "message": m}
// when the call threw. Values are printed as the driver's getString() gives them (null as JSON null).

import java.sql.Array;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;

public final class MetadataProbe {
    private MetadataProbe() {
    }

    interface Call {
        Object run() throws SQLException;
    }

    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", args[2]);
        String schema = args[3];
        String parent = args[4];
        String child = args[5];
        // "visibility": only what a visibility test needs (what the session is shown of the tables).
        boolean visibilityOnly = args.length > 6 && args[6].equals("visibility");
        try (Connection conn = DriverManager.getConnection(args[0], props)) {
            DatabaseMetaData md = conn.getMetaData();
            probe("getTables(null,null,%,[TABLE])",
                () -> md.getTables(null, null, "%", new String[] {"TABLE"}));
            if (visibilityOnly) {
                probe("getColumns(null,schema,parent,%)", () -> md.getColumns(null, schema, parent, "%"));
                probe("getPrimaryKeys(null,schema,parent)", () -> md.getPrimaryKeys(null, schema, parent));
                probe("getImportedKeys(null,schema,child)", () -> md.getImportedKeys(null, schema, child));
                return;
            }
            probeSetup(md);
            probe("getCatalogs", md::getCatalogs);
            probe("getSchemas()", md::getSchemas);
            probe("getSchemas(null,schema)", () -> md.getSchemas(null, schema));
            probe("getTableTypes", md::getTableTypes);
            probe("getTables(null,schema,%,null)", () -> md.getTables(null, schema, "%", null));
            probe("getTables(null,schema,%,[TABLE])",
                () -> md.getTables(null, schema, "%", new String[] {"TABLE"}));
            probe("getTables(null,schema,%,[VIEW])",
                () -> md.getTables(null, schema, "%", new String[] {"VIEW"}));
            probe("getTables(null,schema-pattern,parent,null)",
                () -> md.getTables(null, schema.substring(0, 3) + "%", parent, null));
            probe("getTables(catalog,schema,%,[TABLE,VIEW])",
                () -> md.getTables(conn.getCatalog(), schema, "%", new String[] {"TABLE", "VIEW"}));
            for (String table : new String[] {parent, child}) {
                probe("getColumns(null,schema," + table + ",%)", () -> md.getColumns(null, schema, table, "%"));
                probe("getPrimaryKeys(null,schema," + table + ")", () -> md.getPrimaryKeys(null, schema, table));
                probe("getIndexInfo(null,schema," + table + ",false,false)",
                    () -> md.getIndexInfo(null, schema, table, false, false));
                probe("getIndexInfo(null,schema," + table + ",true,false)",
                    () -> md.getIndexInfo(null, schema, table, true, false));
                probe("getImportedKeys(null,schema," + table + ")", () -> md.getImportedKeys(null, schema, table));
                probe("getExportedKeys(null,schema," + table + ")", () -> md.getExportedKeys(null, schema, table));
            }
            probe("getColumns(null,schema,%,name)", () -> md.getColumns(null, schema, "%", "name"));
            probe("getCrossReference(parent,child)",
                () -> md.getCrossReference(null, schema, parent, null, schema, child));
            probe("getTypeInfo", md::getTypeInfo);
            probe("getFunctions(null,pg_catalog,upper)", () -> md.getFunctions(null, "pg_catalog", "upper"));
            probe("getFunctions(null,schema,%)", () -> md.getFunctions(null, schema, "%"));
            probe("getProcedures(null,schema,%)", () -> md.getProcedures(null, schema, "%"));
            probe("getUDTs(null,schema,%,null)", () -> md.getUDTs(null, schema, "%", null));
            probeQueries(conn, schema, parent);
        }
    }

    private static void probeSetup(DatabaseMetaData md) {
        scalar("getDatabaseProductName", md::getDatabaseProductName);
        scalar("getDatabaseProductVersion", md::getDatabaseProductVersion);
        scalar("getDatabaseMajorVersion", md::getDatabaseMajorVersion);
        scalar("getDatabaseMinorVersion", md::getDatabaseMinorVersion);
        scalar("getIdentifierQuoteString", md::getIdentifierQuoteString);
        scalar("getSearchStringEscape", md::getSearchStringEscape);
        scalar("getExtraNameCharacters", md::getExtraNameCharacters);
        scalar("getCatalogTerm", md::getCatalogTerm);
        scalar("getSchemaTerm", md::getSchemaTerm);
        scalar("getProcedureTerm", md::getProcedureTerm);
        scalar("getMaxColumnNameLength", md::getMaxColumnNameLength);
        scalar("getMaxTableNameLength", md::getMaxTableNameLength);
        scalar("getSQLKeywords", md::getSQLKeywords);
        scalar("getDefaultTransactionIsolation", md::getDefaultTransactionIsolation);
        scalar("isReadOnly", md::isReadOnly);
        scalar("storesLowerCaseIdentifiers", md::storesLowerCaseIdentifiers);
        scalar("storesMixedCaseQuotedIdentifiers", md::supportsMixedCaseQuotedIdentifiers);
        scalar("supportsTransactions", md::supportsTransactions);
        scalar("supportsSavepoints", md::supportsSavepoints);
        scalar("supportsBatchUpdates", md::supportsBatchUpdates);
        scalar("supportsSchemasInTableDefinitions", md::supportsSchemasInTableDefinitions);
        scalar("supportsCatalogsInTableDefinitions", md::supportsCatalogsInTableDefinitions);
        scalar("supportsOuterJoins", md::supportsOuterJoins);
        scalar("supportsFullOuterJoins", md::supportsFullOuterJoins);
        scalar("supportsUnionAll", md::supportsUnionAll);
        scalar("supportsStoredProcedures", md::supportsStoredProcedures);
        scalar("supportsGetGeneratedKeys", md::supportsGetGeneratedKeys);
        scalar("supportsResultSetType(FORWARD_ONLY)",
            () -> md.supportsResultSetType(ResultSet.TYPE_FORWARD_ONLY));
        scalar("supportsTransactionIsolationLevel(SERIALIZABLE)",
            () -> md.supportsTransactionIsolationLevel(Connection.TRANSACTION_SERIALIZABLE));
    }

    private static void probeQueries(Connection conn, String schema, String parent) {
        String table = "\"" + schema + "\".\"" + parent + "\"";
        probe("prepared setInt/setString", () -> {
            PreparedStatement ps = conn.prepareStatement(
                "SELECT id, name FROM " + table + " WHERE id >= ? AND name <> ? ORDER BY id");
            ps.setInt(1, 2);
            ps.setString(2, "nobody");
            return ps.executeQuery();
        });
        probe("prepared setArray(int4)", () -> {
            PreparedStatement ps = conn.prepareStatement(
                "SELECT id, name FROM " + table + " WHERE id = ANY(?) ORDER BY id");
            ps.setArray(1, conn.createArrayOf("int4", new Integer[] {1, 3}));
            return ps.executeQuery();
        });
        probe("prepared setArray(text)", () -> {
            PreparedStatement ps = conn.prepareStatement(
                "SELECT id FROM " + table + " WHERE name = ANY(?) ORDER BY id");
            ps.setArray(1, conn.createArrayOf("text", new String[] {"alpha", "gamma"}));
            return ps.executeQuery();
        });
        probeGetters(conn);
    }

    // One row of every common type, read with the getter a JDBC program would use for it.
    private static void probeGetters(Connection conn) {
        String sql = "SELECT CAST(7 AS SMALLINT) AS i2, CAST(-8 AS INTEGER) AS i4, CAST(9000000000 AS BIGINT) AS i8,"
            + " CAST(1.5 AS REAL) AS f4, CAST(2.25 AS DOUBLE PRECISION) AS f8, CAST(12.34 AS NUMERIC(10,2)) AS num,"
            + " TRUE AS b, CAST('text' AS TEXT) AS t, CAST('vc' AS VARCHAR) AS vc, DATE '2024-02-29' AS d,"
            + " TIME '13:14:15' AS tm, TIMESTAMP '2024-01-02 03:04:05.5' AS ts,"
            + " CAST('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11' AS UUID) AS u, CAST('abc' AS BYTEA) AS by,"
            + " ARRAY[1, 2, 3] AS ia, ARRAY['x', 'y'] AS ta";
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            rs.next();
            List<Object> row = new ArrayList<>();
            row.add(rs.getShort("i2"));
            row.add(rs.getInt("i4"));
            row.add(rs.getLong("i8"));
            row.add(rs.getFloat("f4"));
            row.add(rs.getDouble("f8"));
            row.add(rs.getBigDecimal("num").toPlainString());
            row.add(rs.getBoolean("b"));
            row.add(rs.getString("t"));
            row.add(rs.getString("vc"));
            row.add(rs.getDate("d").toString());
            row.add(rs.getTime("tm").toString());
            row.add(rs.getTimestamp("ts").toString());
            row.add(rs.getObject("u").toString());
            row.add(hex(rs.getBytes("by")));
            row.add(arrayText(rs.getArray("ia")));
            row.add(arrayText(rs.getArray("ta")));
            List<String> types = new ArrayList<>();
            ResultSetMetaData meta = rs.getMetaData();
            for (int i = 1; i <= meta.getColumnCount(); i++) {
                types.add(meta.getColumnType(i) + "/" + meta.getColumnClassName(i));
            }
            System.out.println("{\"call\": \"getters\", \"types\": " + json(types) + ", \"rows\": ["
                + json(row) + "]}");
        } catch (SQLException e) {
            error("getters", e);
        }
    }

    private static String arrayText(Array array) throws SQLException {
        Object[] items = (Object[]) array.getArray();
        StringBuilder out = new StringBuilder(array.getBaseTypeName()).append(':');
        for (Object item : items) {
            out.append(item).append(',');
        }
        return out.toString();
    }

    private static String hex(byte[] bytes) {
        StringBuilder out = new StringBuilder();
        for (byte b : bytes) {
            out.append(String.format("%02x", b));
        }
        return out.toString();
    }

    private static void scalar(String name, Call call) {
        try {
            System.out.println("{\"call\": " + json(name) + ", \"value\": " + json(call.run()) + "}");
        } catch (SQLException e) {
            error(name, e);
        }
    }

    private static void probe(String name, Call call) {
        long started = System.nanoTime();
        try (ResultSet rs = (ResultSet) call.run()) {
            ResultSetMetaData meta = rs.getMetaData();
            int n = meta.getColumnCount();
            List<Object> labels = new ArrayList<>();
            List<Object> types = new ArrayList<>();
            List<Object> typeNames = new ArrayList<>();
            for (int i = 1; i <= n; i++) {
                labels.add(meta.getColumnLabel(i));
                types.add(meta.getColumnType(i));
                typeNames.add(meta.getColumnTypeName(i));
            }
            StringBuilder rows = new StringBuilder("[");
            while (rs.next()) {
                List<Object> row = new ArrayList<>();
                for (int i = 1; i <= n; i++) {
                    row.add(rs.getString(i));
                }
                rows.append(rows.length() > 1 ? ", " : "").append(json(row));
            }
            rows.append(']');
            System.out.println("{\"call\": " + json(name) + ", \"columns\": " + json(labels) + ", \"types\": "
                + json(types) + ", \"type_names\": " + json(typeNames) + ", \"rows\": " + rows + ", \"ms\": "
                + (System.nanoTime() - started) / 1000000 + "}");
        } catch (SQLException e) {
            error(name, e);
        }
    }

    private static void error(String name, SQLException e) {
        System.out.println("{\"call\": " + json(name) + ", \"error\": " + json(e.getSQLState()) + ", \"message\": "
            + json(String.valueOf(e.getMessage())) + "}");
    }

    private static String json(Object value) {
        if (value == null) {
            return "null";
        }
        if (value instanceof Boolean || value instanceof Integer) {
            return value.toString();
        }
        if (value instanceof List) {
            StringBuilder out = new StringBuilder("[");
            for (Object item : (List<?>) value) {
                out.append(out.length() > 1 ? ", " : "").append(json(item));
            }
            return out.append(']').toString();
        }
        String text = value.toString();
        StringBuilder out = new StringBuilder("\"");
        for (char c : text.toCharArray()) {
            if (c == '"' || c == '\\') {
                out.append('\\').append(c);
            } else if (c < 0x20) {
                out.append(String.format("\\u%04x", (int) c));
            } else {
                out.append(c);
            }
        }
        return out.append('"').toString();
    }
}
