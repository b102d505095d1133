//! `json.encode` and `json.decode` for scripts, built on serde_json.
//!
//! Decoding builds Lua values directly from the parser (no intermediate
//! tree on the Rust heap), so a big document counts against the script's
//! memory limit. Encoding charges everything it holds on the Rust heap (the
//! text it writes, and the key lists it sorts at each level) to a budget,
//! what is left of the run's memory limit, and never copies a key: a table
//! that refers to itself under long keys, or to the same big table many
//! times, cannot blow up the worker's memory either.
//!
//! Conventions (those of lua-cjson): JSON `null` is `json.null`, arrays are
//! tables with keys 1..n, an empty table encodes as `{}` unless it came from
//! decoding `[]`; object keys are sorted, so the output is deterministic.
//!
//! Why not mlua's `serialize` feature: it writes a non-UTF-8 string as an
//! array of numbers and NaN as `null` where this refuses both, and it
//! collects and sorts each table's pairs on the Rust heap, uncharged.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::fmt;
use std::io::Write;

use mlua::{Lua, LuaString, Table, Value};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::ser::{self, Serialize, SerializeMap, SerializeSeq};

/// Nesting deeper than this is refused (it also catches tables that contain
/// themselves).
const MAX_DEPTH: usize = 128;

/// Why decoding failed.
#[derive(Debug)]
pub enum DecodeError {
    /// The text is not JSON.
    Invalid(String),
    /// Lua failed while building the value (out of memory): raised as is,
    /// so that the run counts as a memory limit hit.
    Lua(mlua::Error),
}

/// Parses `text` into Lua values. Arrays get `array_mt`, which marks them as
/// arrays for `encode` even when empty.
pub fn decode(lua: &Lua, text: &[u8], array_mt: &Table) -> Result<Value, DecodeError> {
    let failure = RefCell::new(None);
    let seed = Decode {
        lua,
        array_mt,
        failure: &failure,
    };
    let mut parser = serde_json::Deserializer::from_slice(text);
    let result = seed
        .deserialize(&mut parser)
        .and_then(|value| parser.end().map(|()| value));
    match (result, failure.into_inner()) {
        (Ok(value), _) => Ok(value),
        (Err(_), Some(lua_error)) => Err(DecodeError::Lua(lua_error)),
        (Err(e), None) => Err(DecodeError::Invalid(e.to_string())),
    }
}

struct Decode<'a> {
    lua: &'a Lua,
    array_mt: &'a Table,
    failure: &'a RefCell<Option<mlua::Error>>,
}

impl Decode<'_> {
    fn nested(&self) -> Self {
        Decode {
            lua: self.lua,
            array_mt: self.array_mt,
            failure: self.failure,
        }
    }

    fn lua<T, E: de::Error>(&self, result: mlua::Result<T>) -> Result<T, E> {
        result.map_err(|e| {
            let message = e.to_string();
            self.failure.borrow_mut().get_or_insert(e);
            E::custom(message)
        })
    }
}

impl<'de> DeserializeSeed<'de> for Decode<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Decode<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::NULL)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Boolean(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Integer(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Number(v as f64), Value::Integer))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Number(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        let s = self.lua(self.lua.create_string(v))?;
        Ok(Value::String(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let table = self.lua(self.lua.create_table())?;
        let mut i = 1;
        while let Some(value) = seq.next_element_seed(self.nested())? {
            self.lua(table.raw_set(i, value))?;
            i += 1;
        }
        self.lua(table.set_metatable(Some(self.array_mt.clone())))?;
        Ok(Value::Table(table))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let table = self.lua(self.lua.create_table())?;
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(self.nested())?;
            self.lua(table.raw_set(key, value))?;
        }
        Ok(Value::Table(table))
    }
}

/// Why encoding failed.
#[derive(Debug)]
pub enum EncodeError {
    /// The value has no JSON form (a function, NaN, a cycle, …).
    Invalid(String),
    /// The text would be longer than the limit.
    TooLarge(usize),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::Invalid(message) => f.write_str(message),
            EncodeError::TooLarge(limit) => {
                write!(f, "the JSON text would be larger than {limit} bytes")
            }
        }
    }
}

/// Encodes `value` as JSON text, holding at most `limit` bytes on the
/// Rust heap at any time (text and sort lists together).
pub fn encode(value: Value, array_mt: &Table, limit: usize) -> Result<Vec<u8>, EncodeError> {
    let budget = Cell::new(limit);
    let mut out = Capped {
        buf: Vec::new(),
        budget: &budget,
    };
    let too_large = Cell::new(false);
    let encoder = Encode {
        value,
        array_mt: array_mt.to_pointer(),
        depth: 0,
        budget: &budget,
        too_large: &too_large,
    };
    match serde_json::to_writer(&mut out, &encoder) {
        Ok(()) => Ok(out.buf),
        Err(e) if e.is_io() => Err(EncodeError::TooLarge(limit)),
        Err(_) if too_large.get() => Err(EncodeError::TooLarge(limit)),
        Err(e) => Err(EncodeError::Invalid(e.to_string())),
    }
}

/// A writer that takes what it writes from the budget.
struct Capped<'a> {
    buf: Vec<u8>,
    budget: &'a Cell<usize>,
}

impl Write for Capped<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let left = self
            .budget
            .get()
            .checked_sub(data.len())
            .ok_or(std::io::ErrorKind::OutOfMemory)?;
        self.budget.set(left);
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Encode<'a> {
    value: Value,
    array_mt: *const c_void,
    depth: usize,
    budget: &'a Cell<usize>,
    /// Set when the budget ran out (serde's custom errors carry no kind).
    too_large: &'a Cell<bool>,
}

/// An object key, borrowed from Lua: strings are never copied.
enum Key {
    Text(LuaString),
    /// An integer key, in decimal.
    Integer(String),
}

impl Key {
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        match self {
            Key::Text(s) => f(&s.as_bytes()),
            Key::Integer(i) => f(i.as_bytes()),
        }
    }
}

impl Serialize for Key {
    fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Key::Text(text) => match text.to_str() {
                Ok(text) => s.serialize_str(&text),
                Err(_) => Err(ser::Error::custom("cannot encode a key that is not UTF-8")),
            },
            Key::Integer(i) => s.serialize_str(i),
        }
    }
}

/// What one entry of a sort list costs.
const ENTRY: usize = std::mem::size_of::<(Key, Value)>();

impl<'a> Encode<'a> {
    fn nested(&self, value: Value) -> Result<Encode<'a>, String> {
        if self.depth >= MAX_DEPTH {
            return Err(format!(
                "tables nested deeper than {MAX_DEPTH} levels (or a table that contains itself)"
            ));
        }
        Ok(Encode {
            value,
            array_mt: self.array_mt,
            depth: self.depth + 1,
            budget: self.budget,
            too_large: self.too_large,
        })
    }

    /// The length of `table` when it encodes as an array: it came from
    /// decoding an array, or its keys are exactly 1..n with n > 0.
    fn array_len(&self, table: &Table) -> Result<Option<usize>, mlua::Error> {
        let len = table.raw_len();
        if table
            .metatable()
            .is_some_and(|mt| mt.to_pointer() == self.array_mt)
        {
            return Ok(Some(len));
        }
        if len == 0 {
            return Ok(None);
        }
        let mut count = 0;
        for pair in table.pairs::<Value, Value>() {
            let (key, _) = pair?;
            match key {
                Value::Integer(i) if i >= 1 && i as usize <= len => count += 1,
                _ => return Ok(None),
            }
        }
        Ok((count == len).then_some(len))
    }
}

impl Serialize for Encode<'_> {
    fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use ser::Error;
        match &self.value {
            Value::Nil => s.serialize_unit(),
            Value::LightUserData(ud) if ud.0.is_null() => s.serialize_unit(),
            Value::Boolean(b) => s.serialize_bool(*b),
            Value::Integer(i) => s.serialize_i64(*i),
            Value::Number(n) if n.is_finite() => s.serialize_f64(*n),
            Value::Number(_) => Err(S::Error::custom("cannot encode NaN or infinity")),
            Value::String(text) => match text.to_str() {
                Ok(text) => s.serialize_str(&text),
                Err(_) => Err(S::Error::custom("cannot encode a string that is not UTF-8")),
            },
            Value::Table(table) => match self.array_len(table).map_err(S::Error::custom)? {
                Some(len) => {
                    let mut seq = s.serialize_seq(Some(len))?;
                    for i in 1..=len {
                        let item: Value = table.raw_get(i).map_err(S::Error::custom)?;
                        seq.serialize_element(&self.nested(item).map_err(S::Error::custom)?)?;
                    }
                    seq.end()
                }
                None => {
                    let mut entries = Vec::new();
                    let mut held = 0;
                    let result = (|| {
                        for pair in table.pairs::<Value, Value>() {
                            let (key, value) = pair.map_err(S::Error::custom)?;
                            let key = object_key(&key).map_err(S::Error::custom)?;
                            let Some(left) = self.budget.get().checked_sub(ENTRY) else {
                                self.too_large.set(true);
                                return Err(S::Error::custom("the JSON text is too large"));
                            };
                            self.budget.set(left);
                            held += ENTRY;
                            entries.push((key, value));
                        }
                        entries.sort_by(|a, b| a.0.with_bytes(|x| b.0.with_bytes(|y| x.cmp(y))));
                        let mut map = s.serialize_map(Some(entries.len()))?;
                        for (key, value) in entries.drain(..) {
                            map.serialize_entry(
                                &key,
                                &self.nested(value).map_err(S::Error::custom)?,
                            )?;
                        }
                        map.end()
                    })();
                    self.budget.set(self.budget.get() + held);
                    result
                }
            },
            other => Err(S::Error::custom(format!(
                "cannot encode a {}",
                other.type_name()
            ))),
        }
    }
}

/// Object keys are strings; integer keys are written in decimal, as
/// lua-cjson does.
fn object_key(key: &Value) -> Result<Key, String> {
    match key {
        Value::String(s) => match s.to_str() {
            Ok(_) => Ok(Key::Text(s.clone())),
            Err(_) => Err("cannot encode a key that is not UTF-8".to_owned()),
        },
        Value::Integer(i) => Ok(Key::Integer(i.to_string())),
        other => Err(format!(
            "cannot encode a table key of type {}",
            other.type_name()
        )),
    }
}
