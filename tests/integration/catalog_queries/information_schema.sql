-- Hand-written information_schema queries of the kind people and BI tools send.

-- query: information_schema user tables
-- columns: ["table_schema", "table_name", "table_type"]
SELECT table_schema, table_name, table_type FROM information_schema.tables
WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2;

-- query: information_schema columns of orders
-- columns: ["column_name", "data_type", "is_nullable", "numeric_precision", "numeric_scale", "udt_name", "column_default"]
SELECT column_name, data_type, is_nullable, numeric_precision, numeric_scale, udt_name, column_default
FROM information_schema.columns WHERE table_schema = 'sales' AND table_name = 'orders' ORDER BY ordinal_position;

-- query: information_schema schemata
-- columns: ["schema_name"]
SELECT schema_name FROM information_schema.schemata ORDER BY 1;

-- query: information_schema primary and foreign keys
-- columns: ["constraint_type", "table_name", "column_name", "foreign_table", "foreign_column"]
SELECT tc.constraint_type, tc.table_name, kcu.column_name, ccu.table_name AS foreign_table, ccu.column_name AS foreign_column
FROM information_schema.table_constraints AS tc
JOIN information_schema.key_column_usage AS kcu ON tc.constraint_name = kcu.constraint_name AND tc.table_schema = kcu.table_schema
LEFT JOIN information_schema.constraint_column_usage AS ccu ON ccu.constraint_name = tc.constraint_name AND tc.constraint_type = 'FOREIGN KEY'
WHERE tc.table_schema = 'sales' ORDER BY 1, 2, 3;

-- query: information_schema referential constraints
-- columns: ["constraint_name", "unique_constraint_name", "update_rule"]
SELECT constraint_name, unique_constraint_name, update_rule FROM information_schema.referential_constraints;

-- query: information_schema views
-- columns: ["table_schema", "table_name", "view_definition"]
SELECT table_schema, table_name, view_definition FROM information_schema.views ORDER BY 1, 2;

-- query: information_schema check constraints
-- columns: ["constraint_name", "check_clause"]
SELECT constraint_name, check_clause FROM information_schema.check_constraints;
