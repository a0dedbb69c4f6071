-- silta schema v4 (SQLite): checkpoint key handovers. When a key version is promoted, the
-- checkpoint signing key changes with it; the handover note (C2SP signed note, signed by the
-- retiring key and its successor) lets a verifier who trusts the old key follow to the new.
CREATE TABLE key_handovers (
    size       INTEGER PRIMARY KEY,           -- the tree size at the handover
    note       TEXT NOT NULL,
    created_at INTEGER NOT NULL               -- unix ms
) STRICT;
CREATE TRIGGER key_handovers_no_update BEFORE UPDATE ON key_handovers
BEGIN SELECT RAISE(ABORT, 'key handovers are append-only'); END;
CREATE TRIGGER key_handovers_no_delete BEFORE DELETE ON key_handovers
BEGIN SELECT RAISE(ABORT, 'key handovers are append-only'); END;
