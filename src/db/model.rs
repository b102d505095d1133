//! The users domain: types that cannot hold an invalid value. Requests are
//! parsed into these at the edge (`http::users`); the stores take and give
//! nothing else.

use std::fmt;

use serde::{Serialize, Serializer};
use utoipa::ToSchema;
use uuid::Uuid;

/// Longest email accepted, in Unicode characters.
pub const MAX_EMAIL_CHARS: usize = 254;
/// Longest name field accepted, in Unicode characters.
pub const MAX_NAME_CHARS: usize = 256;

/// A user's id: a UUIDv7 made by the server. Its byte order is its time
/// order, which is what "creation order" means for listing and cursors (also
/// across replicas, up to their clock skew), and needs no coordination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(Uuid);

impl UserId {
    /// Sorts before every id the server makes: the cursor of the first page.
    pub const MIN: UserId = UserId(Uuid::nil());

    /// A new id. Ids made by one process are strictly increasing.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// Parses the canonical textual form of a UUID (lower-case hyphenated
    /// 8-4-4-4-12, as [`Display`](fmt::Display) writes it); `None` for any
    /// other spelling, so that one user has one URL.
    pub fn parse(text: &str) -> Option<Self> {
        let id = Uuid::try_parse(text).ok()?;
        let mut buf = Uuid::encode_buffer();
        (id.hyphenated().encode_lower(&mut buf) == text).then_some(Self(id))
    }

    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl Serialize for UserId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Characters an email may not contain: `@` (outside the one separator),
/// control characters and white space. Kept in step with [`EMAIL_PATTERN`].
fn forbidden_in_email(c: char) -> bool {
    c == '@' || c.is_control() || c.is_whitespace() || c == '\u{feff}'
}

/// The JSON Schema `pattern` equivalent to [`Email::parse`], for the OpenAPI
/// document (ECMA-262 syntax; the class lists what `forbidden_in_email` does).
pub const EMAIL_PATTERN: &str = r"^[^@\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]+@[^@\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]+$";

/// The JSON Schema `pattern` of a name: anything but NUL (which PostgreSQL
/// cannot store in text).
pub const NAME_PATTERN: &str = r"^[^\u0000]*$";

/// An email address that looks like one: `local@domain`, both parts
/// non-empty, no spaces or control characters, at most 254 characters.
/// Stored as sent; compared ignoring case through [`Email::key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.chars().count() > MAX_EMAIL_CHARS {
            return Err(format!("must be at most {MAX_EMAIL_CHARS} characters"));
        }
        let looks_right = text.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.is_empty()
                && !local.contains(forbidden_in_email)
                && !domain.contains(forbidden_in_email)
        });
        if looks_right {
            Ok(Self(text.to_owned()))
        } else {
            Err("must look like an address: local@domain, without spaces".into())
        }
    }

    /// A value read back from the store, which only ever holds parsed ones.
    pub(crate) fn from_stored(text: String) -> Self {
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form uniqueness and the `?email=` filter compare: see
    /// [`email_key`].
    pub fn key(&self) -> String {
        email_key(&self.0)
    }
}

/// Which [`email_key`] computed a stored key: 1 was `str::to_lowercase`,
/// 2 is NFKC case folding. Rows with an older one are re-keyed when
/// migrations run (`rekey` in `db::sqlite` and `db::postgres`).
pub const EMAIL_KEY_VERSION: i64 = 2;

/// The key of an email (or a filter value): its NFKC case folding, the
/// Unicode "compatibility caseless" form (NFKC, full case folding, NFKC
/// again, until stable). So `ΑΣ` and `Ασ` (final sigma), `STRASSE` and
/// `straße`, `ſ` and `s`, `µ` (micro) and `μ` (mu), `ＡＤＡ` (full width)
/// and `ada`, `é` and `e` + U+0301 all have one key. Case folding is the
/// locale-free one (no Turkic dotless i).
pub fn email_key(text: &str) -> String {
    let nfkc = icu_normalizer::ComposingNormalizerBorrowed::new_nfkc();
    let fold = icu_casemap::CaseMapperBorrowed::new();
    let mut key = nfkc.normalize(text).into_owned();
    // One round is stable for every string tried (see the property test);
    // the loop makes sure, within four rounds.
    for _ in 0..4 {
        let next = nfkc.normalize(&fold.fold_string(&key)).into_owned();
        if next == key {
            break;
        }
        key = next;
    }
    key
}

impl Serialize for Email {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// One of the four name fields: at most 256 characters, no NUL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.chars().count() > MAX_NAME_CHARS {
            return Err(format!("must be at most {MAX_NAME_CHARS} characters"));
        }
        if text.contains('\0') {
            return Err("must not contain NUL characters".into());
        }
        Ok(Self(text.to_owned()))
    }

    pub(crate) fn from_stored(text: String) -> Self {
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A point in time with millisecond precision, UTC. Stored as milliseconds
/// since the Unix epoch so that every answer about one version of a user
/// shows the very same text, on either back end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Millis(i64);

impl Millis {
    pub fn now() -> Self {
        Self(jiff::Timestamp::now().as_millisecond())
    }

    pub fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub fn as_millis(&self) -> i64 {
        self.0
    }
}

impl fmt::Display for Millis {
    /// RFC 3339 in UTC with exactly three fractional digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match jiff::Timestamp::from_millisecond(self.0) {
            Ok(ts) => write!(f, "{ts:.3}"),
            Err(_) => write!(f, "invalid timestamp {}ms", self.0),
        }
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A stored user, as every answer shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "id": "0192f0c4-8d3e-7c1a-9b7e-2f1d3c4b5a69",
    "email": "ada@example.com",
    "accountEnabled": true,
    "displayName": "Ada Lovelace",
    "givenName": "Ada",
    "surname": "Lovelace",
    "companyName": "Analytical Engines",
    "createdAt": "2026-11-23T06:00:00.000Z",
    "updatedAt": "2026-11-23T06:00:00.000Z"
}))]
pub struct User {
    /// Assigned by the server: a UUIDv7, so ids sort in creation order.
    #[schema(value_type = String, format = "uuid")]
    pub id: UserId,
    /// As sent; unique ignoring case.
    #[schema(value_type = String, max_length = 254)]
    pub email: Email,
    pub account_enabled: bool,
    #[schema(value_type = String, max_length = 256)]
    pub display_name: Name,
    #[schema(value_type = String, max_length = 256)]
    pub given_name: Name,
    #[schema(value_type = String, max_length = 256)]
    pub surname: Name,
    #[schema(value_type = String, max_length = 256)]
    pub company_name: Name,
    /// RFC 3339, UTC, milliseconds.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Millis,
    /// RFC 3339, UTC, milliseconds; changes with every write.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Millis,
    /// Grows by one with every write; the ETag is made of it.
    #[serde(skip)]
    pub version: i64,
}

impl User {
    /// A user about to be created from `fields`, at `now`.
    pub fn new(fields: UserFields, now: Millis) -> Self {
        let UserFields {
            email,
            account_enabled,
            display_name,
            given_name,
            surname,
            company_name,
        } = fields;
        User {
            id: UserId::generate(),
            email,
            account_enabled,
            display_name,
            given_name,
            surname,
            company_name,
            created_at: now,
            updated_at: now,
            version: 1,
        }
    }
}

/// Every writable field, valid: the body of a create or a full replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFields {
    pub email: Email,
    pub account_enabled: bool,
    pub display_name: Name,
    pub given_name: Name,
    pub surname: Name,
    pub company_name: Name,
}

impl UserFields {
    /// The fields with their defaults and the given email.
    pub fn with_email(email: Email) -> Self {
        Self {
            email,
            account_enabled: false,
            display_name: Name::default(),
            given_name: Name::default(),
            surname: Name::default(),
            company_name: Name::default(),
        }
    }
}

/// A change to some fields: `None` leaves a field as it is. A merge patch's
/// `null` has already become the field's default here, and a replace sets
/// every field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPatch {
    pub email: Option<Email>,
    pub account_enabled: Option<bool>,
    pub display_name: Option<Name>,
    pub given_name: Option<Name>,
    pub surname: Option<Name>,
    pub company_name: Option<Name>,
}

impl From<UserFields> for UserPatch {
    fn from(f: UserFields) -> Self {
        Self {
            email: Some(f.email),
            account_enabled: Some(f.account_enabled),
            display_name: Some(f.display_name),
            given_name: Some(f.given_name),
            surname: Some(f.surname),
            company_name: Some(f.company_name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_must_look_like_addresses() {
        for good in [
            "ada@example.com",
            "a@b",
            "Ada.Lovelace+x@Example.COM",
            "ü@例え.jp",
        ] {
            assert!(Email::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "ada @example.com",
            "ada@exa mple.com",
            "a@b@c",
            "ada\t@x",
            "ada@x\n",
            "ada@\u{a0}x",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn email_length_counts_characters() {
        let local = "é".repeat(MAX_EMAIL_CHARS - 2);
        assert!(Email::parse(&format!("{local}@x")).is_ok());
        let err = Email::parse(&format!("{local}a@x")).unwrap_err();
        assert!(err.contains("254"), "{err}");
    }

    #[test]
    fn email_key_ignores_case_but_the_email_keeps_it() {
        let e = Email::parse("Ada@Example.COM").unwrap();
        assert_eq!(e.as_str(), "Ada@Example.COM");
        assert_eq!(e.key(), "ada@example.com");
        assert_eq!(e.key(), Email::parse("ADA@example.com").unwrap().key());
    }

    #[test]
    fn email_keys_fold_case_the_unicode_way() {
        // The twins of issue 17, and compatibility forms.
        for (a, b) in [
            ("ΑΣ@x.gr", "Ασ@x.gr"),
            ("ας@x.gr", "ασ@x.gr"),
            ("STRASSE@x.de", "straße@x.de"),
            ("ſ@x", "s@x"),
            ("Μ2@x", "µ2@x"),
            ("ＡＤＡ@ｅｘａｍｐｌｅ.com", "ada@example.com"),
            ("e\u{301}@x", "é@x"),
            ("ﬁ@x", "FI@x"),
            ("ǅ@x", "ǆ@x"),
            ("ẞ@x", "ss@x"),
        ] {
            assert_eq!(email_key(a), email_key(b), "{a} vs {b}");
        }
        for (a, b) in [("a@x", "b@x"), ("e@x", "é@x"), ("i@x", "ı@x")] {
            assert_ne!(email_key(a), email_key(b), "{a} vs {b}");
        }
    }

    proptest::proptest! {
        #[test]
        fn email_keys_are_stable_and_ignore_case(text in "\\PC{0,40}") {
            let key = email_key(&text);
            // A key is its own key: a filter value that is a key finds it.
            proptest::prop_assert_eq!(&email_key(&key), &key);
            // Upper, lower and title case of the same text share its key.
            proptest::prop_assert_eq!(&email_key(&text.to_uppercase()), &key);
            proptest::prop_assert_eq!(&email_key(&text.to_lowercase()), &key);
        }
    }

    #[test]
    fn names_are_limited_in_characters_not_bytes() {
        assert!(Name::parse(&"名".repeat(MAX_NAME_CHARS)).is_ok());
        assert!(Name::parse(&"a".repeat(MAX_NAME_CHARS + 1)).is_err());
        assert!(Name::parse("a\0b").is_err());
        assert!(Name::parse("").is_ok());
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(
            Millis::from_millis(1_795_413_600_000).to_string(),
            "2026-11-23T06:00:00.000Z"
        );
        assert_eq!(
            Millis::from_millis(1_795_413_600_123).to_string(),
            "2026-11-23T06:00:00.123Z"
        );
    }

    #[test]
    fn ids_grow_and_round_trip() {
        let a = UserId::generate();
        let b = UserId::generate();
        assert!(a < b);
        assert!(UserId::MIN < a);
        assert_eq!(UserId::parse(&a.to_string()), Some(a));
        assert_eq!(UserId::parse("nope"), None);
        let text = "0192f0c4-8d3e-7c1a-9b7e-2f1d3c4b5a69";
        assert!(UserId::parse(text).is_some());
        for other in [
            "0192F0C4-8D3E-7C1A-9B7E-2F1D3C4B5A69",
            "{0192f0c4-8d3e-7c1a-9b7e-2f1d3c4b5a69}",
            "urn:uuid:0192f0c4-8d3e-7c1a-9b7e-2f1d3c4b5a69",
            "0192f0c48d3e7c1a9b7e2f1d3c4b5a69",
        ] {
            assert_eq!(UserId::parse(other), None, "{other}");
        }
    }

    #[test]
    fn the_email_pattern_matches_what_parse_accepts() {
        // The pattern's class must name exactly the forbidden characters.
        let listed = |c: char| {
            matches!(c, '@' | '\u{0}'..='\u{20}' | '\u{7f}'..='\u{a0}' | '\u{1680}'
                | '\u{2000}'..='\u{200a}' | '\u{2028}' | '\u{2029}' | '\u{202f}'
                | '\u{205f}' | '\u{3000}' | '\u{feff}')
        };
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            assert_eq!(forbidden_in_email(c), listed(c), "U+{:04X}", c as u32);
        }
    }
}
