-- silta schema v5 (PostgreSQL): key handovers cannot be truncated either. Migration 0003
-- refused UPDATE and DELETE of a handover but not TRUNCATE, which fires no row trigger; every
-- other append-only table has had this statement-level guard since 0001. (SQLite has no
-- TRUNCATE: its unqualified DELETE fires the row triggers 0004 set.)
--
-- From this release the gateway can run as a role that does not own these tables: the owner
-- migrates (`silta db migrate --url OWNER_URL --runtime-role ROLE`), which then grants the
-- runtime role only the row privileges its queries need (`RUNTIME_PRIVILEGES` in
-- crates/silta-store/src/postgres_roles.rs). Those grants are re-applied by every
-- `silta db migrate`, not written here: a migration runs once, while a runtime role may be
-- named, renamed or added later. Nothing in this file needs that role, so it runs unchanged
-- on a database where one role still owns everything.
CREATE TRIGGER key_handovers_no_truncate BEFORE TRUNCATE ON key_handovers
    FOR EACH STATEMENT EXECUTE FUNCTION silta_refuse();
