-- silta schema v3 (PostgreSQL): checkpoint key handovers. When a key version is promoted, the
-- checkpoint signing key changes with it; the handover note (C2SP signed note, signed by the
-- retiring key and its successor) lets a verifier who trusts the old key follow to the new.
CREATE TABLE key_handovers (
    size       BIGINT PRIMARY KEY,            -- the tree size at the handover
    note       TEXT NOT NULL,
    created_at BIGINT NOT NULL                -- unix ms
);
CREATE TRIGGER key_handovers_no_update BEFORE UPDATE OR DELETE ON key_handovers
    FOR EACH ROW EXECUTE FUNCTION silta_refuse();
