-- Email keys become NFKC case foldings instead of lower-casings (issue 17),
-- so `ΑΣ@x.gr` and `Ασ@x.gr`, or `STRASSE@x` and `straße@x`, are one email.
--
-- The key is computed by skiff, not SQL: right after migrating, skiff
-- re-keys every row whose `email_key_version` is older than its own (1:
-- lower-cased; 2: NFKC case folding). Accounts made before this change whose
-- emails now have one key ("twins") are all kept, none merged or deleted:
-- one keeps `email_twin` 0 (the first re-keyed, unless another holds it) and the others get
-- 1, 2, …, so uniqueness holds on (key, twin). New accounts and changed
-- emails always take twin 0, so they cannot join a key already taken.
ALTER TABLE users
    ADD COLUMN email_key_version integer NOT NULL DEFAULT 1,
    ADD COLUMN email_twin integer NOT NULL DEFAULT 0 CHECK (email_twin >= 0);
DROP INDEX users_email_key;
CREATE UNIQUE INDEX users_email_key ON users (email_key, email_twin);

COMMENT ON COLUMN users.email_key IS 'NFKC case folding of the email (computed by skiff); unique with email_twin';
COMMENT ON COLUMN users.email_key_version IS 'which key function computed email_key: 1 lower-casing, 2 NFKC case folding';
COMMENT ON COLUMN users.email_twin IS '0, or 1, 2, … for accounts made before case folding whose emails fold to one key';
