-- The users of the /users API (SQLite).
--
-- `id` is a UUIDv7 stored as 16 bytes: byte order is creation order, so the
-- primary key serves keyset pagination. `email_key` is the lower-cased email
-- (computed by skiff) and carries the case-insensitive uniqueness. `version`
-- grows by one on every write and is part of the ETag. Times are
-- milliseconds since the Unix epoch, UTC.
CREATE TABLE users (
    id              BLOB    NOT NULL PRIMARY KEY CHECK (length(id) = 16),
    email           TEXT    NOT NULL,
    email_key       TEXT    NOT NULL,
    account_enabled INTEGER NOT NULL DEFAULT 0 CHECK (account_enabled IN (0, 1)),
    display_name    TEXT    NOT NULL DEFAULT '',
    given_name      TEXT    NOT NULL DEFAULT '',
    surname         TEXT    NOT NULL DEFAULT '',
    company_name    TEXT    NOT NULL DEFAULT '',
    version         INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE UNIQUE INDEX users_email_key ON users (email_key);
