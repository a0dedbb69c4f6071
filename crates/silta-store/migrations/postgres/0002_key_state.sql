-- silta schema v2 (PostgreSQL): the pseudonym key version in use.
-- Records are written under this version. `silta keys promote` sets it in the same transaction
-- that moves every stored lookup and audit pseudonym to it. No row: the keyring's first version.
CREATE TABLE key_state (
    id                INTEGER PRIMARY KEY CHECK (id = 1),
    pseudonym_version BIGINT NOT NULL
);
