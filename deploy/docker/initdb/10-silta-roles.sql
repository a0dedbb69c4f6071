-- Run once by the postgres image when it creates the database (docker-entrypoint-initdb.d).
-- The schema's owner is POSTGRES_USER (`silta`), which `migrate` connects as. The gateway
-- logs in as `silta_gateway`, a member of the NOLOGIN group role `silta_runtime` that
-- `silta db migrate --runtime-role silta_runtime` grants the runtime privileges to
-- (docs/operations.md, "PostgreSQL roles"). Development passwords only.
CREATE ROLE silta_runtime NOLOGIN;
CREATE ROLE silta_gateway LOGIN PASSWORD 'silta-gateway-dev-only' IN ROLE silta_runtime;
