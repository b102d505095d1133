//! `string.find`, `string.match`, `string.gmatch` and `string.gsub` with a
//! step budget: Lua's pattern matcher (lstrlib.c of Lua 5.4), ported
//! line for line, that looks at the run's clock every few thousand steps.
//!
//! Why a port: the C matcher backtracks inside one C call, where no hook
//! can reach it. `^%s*(.-)%s*$` on 64 KiB of spaces, or a chain of `.-`,
//! runs for seconds to hours in there, and no static rule on pattern and
//! subject size can tell those apart from the everyday uses of the same
//! patterns. Counting steps bounds every pattern, whatever it is, by the
//! run's own deadline, and leaves the everyday ones as fast as before.
//! Plain searches (`find` with `plain`, or no special characters) use a
//! linear-time substring search, where C's is quadratic in the worst case.
//! What `gsub` builds is charged to the run's memory budget before Lua
//! sees it.

use mlua::{Function, Lua, LuaString, MultiValue, Table, Value};

use super::clock::Clock;
use super::errors::{error_message, first_line, is_memory_error, located};

const MAXCCALLS: usize = 200;
const MAXCAPTURES: usize = 32;
const CAP_UNFINISHED: isize = -1;
const CAP_POSITION: isize = -2;
const ESC: u8 = b'%';
const SPECIALS: &[u8] = b"^$*+?.([%-";
/// Matcher steps between two looks at the clock: a few microseconds.
const STEPS_PER_CHECK: u64 = 4096;

/// Why matching stopped.
pub enum Fail {
    /// A malformed pattern or a bad capture: a script error.
    Error(String),
    /// The run's deadline passed.
    Time,
}

type Outcome<T> = Result<T, Fail>;

fn bad(message: impl Into<String>) -> Fail {
    Fail::Error(message.into())
}

/// A capture as the matcher found it.
enum Capture<'a> {
    Text(&'a [u8]),
    Position(usize),
}

struct Matcher<'a> {
    src: &'a [u8],
    pat: &'a [u8],
    level: usize,
    capture: [(usize, isize); MAXCAPTURES],
    depth: usize,
    steps: u64,
    next_check: u64,
}

impl<'a> Matcher<'a> {
    fn new(src: &'a [u8], pat: &'a [u8]) -> Self {
        Self {
            src,
            pat,
            level: 0,
            capture: [(0, 0); MAXCAPTURES],
            depth: MAXCCALLS,
            steps: 0,
            next_check: STEPS_PER_CHECK,
        }
    }

    fn reprep(&mut self) {
        self.level = 0;
        self.depth = MAXCCALLS;
    }

    /// Counts `n` steps; past the deadline, fails.
    fn tick(&mut self, n: u64) -> Outcome<()> {
        self.steps += n;
        if self.steps >= self.next_check {
            self.next_check = self.steps + STEPS_PER_CHECK;
            if !Clock::on_time() {
                return Err(Fail::Time);
            }
        }
        Ok(())
    }

    /// The pattern byte at `i`, or 0 past its end (C reads the '\0').
    fn p(&self, i: usize) -> u8 {
        self.pat.get(i).copied().unwrap_or(0)
    }

    fn s(&self, i: usize) -> u8 {
        self.src.get(i).copied().unwrap_or(0)
    }

    fn class_end(&self, mut p: usize) -> Outcome<usize> {
        let c = self.p(p);
        p += 1;
        match c {
            ESC => {
                if p >= self.pat.len() {
                    return Err(bad("malformed pattern (ends with '%')"));
                }
                Ok(p + 1)
            }
            b'[' => {
                if self.p(p) == b'^' {
                    p += 1;
                }
                loop {
                    if p >= self.pat.len() {
                        return Err(bad("malformed pattern (missing ']')"));
                    }
                    let c = self.pat[p];
                    p += 1;
                    if c == ESC && p < self.pat.len() {
                        p += 1;
                    }
                    if self.p(p) == b']' {
                        break;
                    }
                }
                Ok(p + 1)
            }
            _ => Ok(p),
        }
    }

    fn bracket(&self, c: u8, mut p: usize, ec: usize) -> bool {
        let mut sig = true;
        if self.p(p + 1) == b'^' {
            sig = false;
            p += 1;
        }
        loop {
            p += 1;
            if p >= ec {
                return !sig;
            }
            if self.p(p) == ESC {
                p += 1;
                if match_class(c, self.p(p)) {
                    return sig;
                }
            } else if self.p(p + 1) == b'-' && p + 2 < ec {
                p += 2;
                if self.p(p - 2) <= c && c <= self.p(p) {
                    return sig;
                }
            } else if self.p(p) == c {
                return sig;
            }
        }
    }

    fn single(&self, s: usize, p: usize, ep: usize) -> bool {
        if s >= self.src.len() {
            return false;
        }
        let c = self.src[s];
        match self.p(p) {
            b'.' => true,
            ESC => match_class(c, self.p(p + 1)),
            b'[' => self.bracket(c, p, ep - 1),
            other => other == c,
        }
    }

    fn balance(&mut self, s: usize, p: usize) -> Outcome<Option<usize>> {
        if p + 1 >= self.pat.len() {
            return Err(bad("malformed pattern (missing arguments to '%b')"));
        }
        if self.s(s) != self.p(p) {
            return Ok(None);
        }
        let (b, e) = (self.p(p), self.p(p + 1));
        let mut count = 1;
        let mut s = s + 1;
        while s < self.src.len() {
            self.tick(1)?;
            let c = self.src[s];
            if c == e {
                count -= 1;
                if count == 0 {
                    return Ok(Some(s + 1));
                }
            } else if c == b {
                count += 1;
            }
            s += 1;
        }
        Ok(None)
    }

    fn max_expand(&mut self, s: usize, p: usize, ep: usize) -> Outcome<Option<usize>> {
        let mut i = 0;
        while self.single(s + i, p, ep) {
            self.tick(1)?;
            i += 1;
        }
        loop {
            if let Some(res) = self.do_match(s + i, ep + 1)? {
                return Ok(Some(res));
            }
            if i == 0 {
                return Ok(None);
            }
            i -= 1;
        }
    }

    fn min_expand(&mut self, mut s: usize, p: usize, ep: usize) -> Outcome<Option<usize>> {
        loop {
            if let Some(res) = self.do_match(s, ep + 1)? {
                return Ok(Some(res));
            }
            if self.single(s, p, ep) {
                s += 1;
            } else {
                return Ok(None);
            }
        }
    }

    fn start_capture(&mut self, s: usize, p: usize, what: isize) -> Outcome<Option<usize>> {
        if self.level >= MAXCAPTURES {
            return Err(bad("too many captures"));
        }
        self.capture[self.level] = (s, what);
        self.level += 1;
        let res = self.do_match(s, p)?;
        if res.is_none() {
            self.level -= 1;
        }
        Ok(res)
    }

    fn end_capture(&mut self, s: usize, p: usize) -> Outcome<Option<usize>> {
        let Some(l) = (0..self.level)
            .rev()
            .find(|&l| self.capture[l].1 == CAP_UNFINISHED)
        else {
            return Err(bad("invalid pattern capture"));
        };
        self.capture[l].1 = (s - self.capture[l].0) as isize;
        let res = self.do_match(s, p)?;
        if res.is_none() {
            self.capture[l].1 = CAP_UNFINISHED;
        }
        Ok(res)
    }

    fn match_capture(&mut self, s: usize, digit: u8) -> Outcome<Option<usize>> {
        let l = digit as isize - b'1' as isize;
        if l < 0 || l as usize >= self.level || self.capture[l as usize].1 == CAP_UNFINISHED {
            return Err(bad(format!("invalid capture index %{}", l + 1)));
        }
        let (init, len) = self.capture[l as usize];
        let len = len.max(0) as usize;
        self.tick(1 + len as u64 / 16)?;
        if self.src.len() - s >= len && self.src[init..init + len] == self.src[s..s + len] {
            Ok(Some(s + len))
        } else {
            Ok(None)
        }
    }

    fn do_match(&mut self, mut s: usize, mut p: usize) -> Outcome<Option<usize>> {
        if self.depth == 0 {
            return Err(bad("pattern too complex"));
        }
        self.depth -= 1;
        self.tick(1)?;
        let result = loop {
            if p == self.pat.len() {
                break Some(s);
            }
            match self.pat[p] {
                b'(' => {
                    break if self.p(p + 1) == b')' {
                        self.start_capture(s, p + 2, CAP_POSITION)?
                    } else {
                        self.start_capture(s, p + 1, CAP_UNFINISHED)?
                    };
                }
                b')' => break self.end_capture(s, p + 1)?,
                b'$' if p + 1 == self.pat.len() => break (s == self.src.len()).then_some(s),
                ESC if self.p(p + 1) == b'b' => match self.balance(s, p + 2)? {
                    Some(next) => {
                        s = next;
                        p += 4;
                    }
                    None => break None,
                },
                ESC if self.p(p + 1) == b'f' => {
                    p += 2;
                    if self.p(p) != b'[' {
                        return Err(bad("missing '[' after '%f' in pattern"));
                    }
                    let ep = self.class_end(p)?;
                    let previous = if s == 0 { 0 } else { self.src[s - 1] };
                    if !self.bracket(previous, p, ep - 1) && self.bracket(self.s(s), p, ep - 1) {
                        p = ep;
                    } else {
                        break None;
                    }
                }
                ESC if self.p(p + 1).is_ascii_digit() => {
                    match self.match_capture(s, self.p(p + 1))? {
                        Some(next) => {
                            s = next;
                            p += 2;
                        }
                        None => break None,
                    }
                }
                _ => {
                    let ep = self.class_end(p)?;
                    let suffix = self.p(ep);
                    if !self.single(s, p, ep) {
                        if matches!(suffix, b'*' | b'?' | b'-') {
                            p = ep + 1;
                            continue;
                        }
                        break None;
                    }
                    match suffix {
                        b'?' => {
                            if let Some(res) = self.do_match(s + 1, ep + 1)? {
                                break Some(res);
                            }
                            p = ep + 1;
                        }
                        b'+' => break self.max_expand(s + 1, p, ep)?,
                        b'*' => break self.max_expand(s, p, ep)?,
                        b'-' => break self.min_expand(s, p, ep)?,
                        _ => {
                            s += 1;
                            p = ep;
                        }
                    }
                }
            }
        };
        self.depth += 1;
        Ok(result)
    }

    /// Capture `i`, or the whole match `s..e` when there are no captures.
    fn capture(&self, i: usize, s: usize, e: usize) -> Outcome<Capture<'a>> {
        if i >= self.level {
            if i != 0 {
                return Err(bad(format!("invalid capture index %{}", i + 1)));
            }
            return Ok(Capture::Text(&self.src[s..e]));
        }
        let (init, len) = self.capture[i];
        match len {
            CAP_UNFINISHED => Err(bad("unfinished capture")),
            CAP_POSITION => Ok(Capture::Position(init + 1)),
            len => Ok(Capture::Text(&self.src[init..init + len as usize])),
        }
    }

    /// All captures; the whole match if there are none and `whole` is given.
    fn captures(&self, lua: &Lua, whole: Option<(usize, usize)>) -> mlua::Result<Vec<Value>> {
        let n = match whole {
            Some(_) if self.level == 0 => 1,
            _ => self.level,
        };
        let (s, e) = whole.unwrap_or((0, 0));
        (0..n)
            .map(|i| match self.capture(i, s, e) {
                Ok(Capture::Text(text)) => lua.create_string(text).map(Value::String),
                Ok(Capture::Position(at)) => Ok(Value::Integer(at as i64)),
                Err(Fail::Error(m)) => Err(located(lua, &m)),
                Err(Fail::Time) => Err(time_error()),
            })
            .collect()
    }
}

fn match_class(c: u8, class: u8) -> bool {
    let res = match class.to_ascii_lowercase() {
        b'a' => c.is_ascii_alphabetic(),
        b'c' => c.is_ascii_control(),
        b'd' => c.is_ascii_digit(),
        b'g' => c.is_ascii_graphic(),
        b'l' => c.is_ascii_lowercase(),
        b'p' => c.is_ascii_punctuation(),
        // C's isspace: also \v, which Rust's is_ascii_whitespace leaves out.
        b's' => matches!(c, b' ' | b'\t'..=b'\r'),
        b'u' => c.is_ascii_uppercase(),
        b'w' => c.is_ascii_alphanumeric(),
        b'x' => c.is_ascii_hexdigit(),
        b'z' => c == 0,
        _ => return class == c,
    };
    if class.is_ascii_lowercase() {
        res
    } else {
        !res
    }
}

fn time_error() -> mlua::Error {
    mlua::Error::runtime("time limit exceeded")
}

fn fail(lua: &Lua, fail: Fail) -> mlua::Error {
    match fail {
        Fail::Error(m) => located(lua, &m),
        Fail::Time => time_error(),
    }
}

/// `luaL_checklstring`: a string, or a number as Lua writes it.
fn check_string(lua: &Lua, args: &MultiValue, arg: usize, name: &str) -> mlua::Result<LuaString> {
    let value = args.get(arg - 1).cloned().unwrap_or(Value::Nil);
    let kind = if arg > args.len() {
        "no value"
    } else {
        value.type_name()
    };
    match value {
        Value::String(s) => Ok(s),
        v @ (Value::Integer(_) | Value::Number(_)) => lua
            .coerce_string(v)?
            .ok_or_else(|| mlua::Error::runtime("")),
        _ => Err(located(
            lua,
            &format!("bad argument #{arg} to '{name}' (string expected, got {kind})"),
        )),
    }
}

/// `luaL_optinteger`.
fn opt_integer(
    lua: &Lua,
    args: &MultiValue,
    arg: usize,
    name: &str,
    default: i64,
) -> mlua::Result<i64> {
    let value = args.get(arg - 1).cloned().unwrap_or(Value::Nil);
    let kind = value.type_name();
    match value {
        Value::Nil => Ok(default),
        Value::Integer(i) => Ok(i),
        other => match lua.coerce_integer(other.clone()) {
            Ok(Some(i)) => Ok(i),
            _ => {
                let why = if matches!(other, Value::Number(_) | Value::String(_))
                    && lua.coerce_number(other).ok().flatten().is_some()
                {
                    "number has no integer representation".to_owned()
                } else {
                    format!("number expected, got {kind}")
                };
                Err(located(
                    lua,
                    &format!("bad argument #{arg} to '{name}' ({why})"),
                ))
            }
        },
    }
}

/// `posrelatI`, minus one: a 0-based start from a 1-based (or negative) one.
fn start_index(pos: i64, len: usize) -> usize {
    let len_i = len as i64;
    let one_based = if pos > 0 {
        pos as u64
    } else if pos == 0 || pos < -len_i {
        1
    } else {
        (len_i + pos + 1) as u64
    };
    usize::try_from(one_based - 1).unwrap_or(usize::MAX)
}

fn find_aux(lua: &Lua, args: MultiValue, find: bool) -> mlua::Result<MultiValue> {
    let name = if find { "find" } else { "match" };
    let subject = check_string(lua, &args, 1, name)?;
    let pattern = check_string(lua, &args, 2, name)?;
    let src = subject.as_bytes();
    let pat = pattern.as_bytes();
    let init = start_index(opt_integer(lua, &args, 3, name, 1)?, src.len());
    if init > src.len() {
        return Ok(MultiValue::from_iter([Value::Nil]));
    }
    let plain = args
        .get(3)
        .is_some_and(|v| !matches!(v, Value::Nil | Value::Boolean(false)));
    if find && (plain || !pat.iter().any(|b| SPECIALS.contains(b))) {
        let Some(at) = memchr::memmem::find(&src[init..], &pat) else {
            return Ok(MultiValue::from_iter([Value::Nil]));
        };
        let start = init + at;
        return Ok(MultiValue::from_iter([
            Value::Integer(start as i64 + 1),
            Value::Integer((start + pat.len()) as i64),
        ]));
    }
    let anchor = pat.first() == Some(&b'^');
    let mut m = Matcher::new(&src, if anchor { &pat[1..] } else { &pat[..] });
    let mut s1 = init;
    loop {
        m.reprep();
        if let Some(e) = m.do_match(s1, 0).map_err(|f| fail(lua, f))? {
            let mut out = Vec::new();
            if find {
                out.push(Value::Integer(s1 as i64 + 1));
                out.push(Value::Integer(e as i64));
                out.extend(m.captures(lua, None)?);
            } else {
                out.extend(m.captures(lua, Some((s1, e)))?);
            }
            return Ok(MultiValue::from_iter(out));
        }
        if anchor || s1 >= src.len() {
            return Ok(MultiValue::from_iter([Value::Nil]));
        }
        s1 += 1;
    }
}

fn gmatch(lua: &Lua, args: MultiValue, marker: Table) -> mlua::Result<Function> {
    let subject = check_string(lua, &args, 1, "gmatch")?;
    let pattern = check_string(lua, &args, 2, "gmatch")?;
    let len = subject.as_bytes().len();
    let init = start_index(opt_integer(lua, &args, 3, "gmatch", 1)?, len).min(len + 1);
    let position = std::cell::Cell::new(init);
    let last_match = std::cell::Cell::new(None::<usize>);
    lua.create_function(move |lua, ()| {
        let next = (|| {
            let src = subject.as_bytes();
            let pat = pattern.as_bytes();
            let mut m = Matcher::new(&src, &pat);
            let mut s = position.get();
            while s <= src.len() {
                m.reprep();
                if let Some(e) = m.do_match(s, 0).map_err(|f| fail(lua, f))?
                    && Some(e) != last_match.get()
                {
                    position.set(e);
                    last_match.set(Some(e));
                    return Ok(MultiValue::from_iter(m.captures(lua, Some((s, e)))?));
                }
                s += 1;
            }
            position.set(s);
            Ok(MultiValue::new())
        })();
        script_errors(lua, &marker, next)
    })
}

/// The replacement of `gsub`.
enum Replacement {
    Text(LuaString),
    Table(Table),
    Function(Function),
}

fn gsub(lua: &Lua, args: MultiValue, budget: &dyn Fn(&Lua) -> usize) -> mlua::Result<MultiValue> {
    let subject = check_string(lua, &args, 1, "gsub")?;
    let pattern = check_string(lua, &args, 2, "gsub")?;
    let repl = match args.get(2).cloned().unwrap_or(Value::Nil) {
        Value::String(s) => Replacement::Text(s),
        v @ (Value::Integer(_) | Value::Number(_)) => {
            Replacement::Text(lua.coerce_string(v)?.expect("a number has a text form"))
        }
        Value::Table(t) => Replacement::Table(t),
        Value::Function(f) => Replacement::Function(f),
        other => {
            return Err(located(
                lua,
                &format!(
                    "bad argument #3 to 'gsub' (string/function/table expected, got {})",
                    if args.len() < 3 {
                        "no value"
                    } else {
                        other.type_name()
                    }
                ),
            ));
        }
    };
    let src_ref = subject.as_bytes();
    let src: &[u8] = &src_ref;
    let max_n = opt_integer(lua, &args, 4, "gsub", src.len() as i64 + 1)?;
    let pat_ref = pattern.as_bytes();
    let anchor = pat_ref.first() == Some(&b'^');
    let mut m = Matcher::new(src, if anchor { &pat_ref[1..] } else { &pat_ref[..] });
    let limit = budget(lua);
    let mut out: Vec<u8> = Vec::new();
    let grow = |out: &mut Vec<u8>, bytes: &[u8]| -> mlua::Result<()> {
        // An inline attempt's slice of memory: a small subject with a long
        // replacement builds megabytes within one call.
        if !Clock::within_hold(|| lua.used_memory() + out.len() + bytes.len()) {
            return Err(time_error());
        }
        if out.len() + bytes.len() > limit {
            return Err(mlua::Error::MemoryError(
                "not enough memory for the result of gsub".into(),
            ));
        }
        out.extend_from_slice(bytes);
        Ok(())
    };
    let (mut s, mut n, mut changed) = (0usize, 0i64, false);
    let mut last_match = None;
    while n < max_n {
        m.reprep();
        let e = m.do_match(s, 0).map_err(|f| fail(lua, f))?;
        if let Some(e) = e.filter(|&e| Some(e) != last_match) {
            n += 1;
            let value = match &repl {
                Replacement::Text(text) => {
                    add_text(lua, &m, &mut out, &text.as_bytes(), s, e, &grow)?;
                    changed = true;
                    None
                }
                Replacement::Table(t) => {
                    let key = m.captures(lua, Some((s, e)))?.into_iter().next();
                    Some(t.get::<Value>(key.unwrap_or(Value::Nil))?)
                }
                Replacement::Function(f) => {
                    let captures = m.captures(lua, Some((s, e)))?;
                    let _nested = Nesting::enter().ok_or_else(|| {
                        located(
                            lua,
                            &format!(
                                "gsub: replacement functions nested deeper than {MAX_NESTING}"
                            ),
                        )
                    })?;
                    Some(f.call::<Value>(MultiValue::from_iter(captures))?)
                }
            };
            match value {
                None => {}
                Some(Value::Nil | Value::Boolean(false)) => grow(&mut out, &src[s..e])?,
                Some(v @ (Value::String(_) | Value::Integer(_) | Value::Number(_))) => {
                    let text = lua.coerce_string(v)?.expect("a string or number");
                    grow(&mut out, &text.as_bytes())?;
                    changed = true;
                }
                Some(other) => {
                    return Err(located(
                        lua,
                        &format!("invalid replacement value (a {})", other.type_name()),
                    ));
                }
            }
            s = e;
            last_match = Some(e);
        } else if s < src.len() {
            grow(&mut out, &src[s..s + 1])?;
            s += 1;
        } else {
            break;
        }
        if anchor {
            break;
        }
    }
    let result = if changed {
        grow(&mut out, &src[s..])?;
        Value::String(lua.create_string(&out)?)
    } else {
        Value::String(subject.clone())
    };
    Ok(MultiValue::from_iter([result, Value::Integer(n)]))
}

/// How deeply `gsub` calls may nest through replacement functions. Each
/// level holds Rust frames on the worker's stack; C Lua stops at 200 C
/// levels, where these frames would need more stack than a worker has.
const MAX_NESTING: usize = 64;

thread_local! {
    static NESTING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One level of `gsub` calling back into Lua; leaving it on drop.
struct Nesting;

impl Nesting {
    fn enter() -> Option<Nesting> {
        NESTING.with(|n| {
            (n.get() < MAX_NESTING).then(|| {
                n.set(n.get() + 1);
                Nesting
            })
        })
    }
}

impl Drop for Nesting {
    fn drop(&mut self) {
        NESTING.with(|n| n.set(n.get() - 1));
    }
}

/// Appends to `gsub`'s result, charging the run's budget.
type Grow<'a> = dyn Fn(&mut Vec<u8>, &[u8]) -> mlua::Result<()> + 'a;

/// `add_s`: a replacement string with `%0`..`%9` and `%%`.
fn add_text(
    lua: &Lua,
    m: &Matcher,
    out: &mut Vec<u8>,
    text: &[u8],
    s: usize,
    e: usize,
    grow: &Grow,
) -> mlua::Result<()> {
    let mut rest = text;
    while let Some(at) = memchr::memchr(ESC, rest) {
        grow(out, &rest[..at])?;
        match rest.get(at + 1).copied() {
            Some(ESC) => grow(out, b"%")?,
            Some(b'0') => grow(out, &m.src[s..e])?,
            Some(d @ b'1'..=b'9') => match m.capture((d - b'1') as usize, s, e) {
                Ok(Capture::Text(t)) => grow(out, t)?,
                Ok(Capture::Position(p)) => grow(out, p.to_string().as_bytes())?,
                Err(f) => return Err(fail(lua, f)),
            },
            _ => {
                return Err(located(lua, "invalid use of '%' in replacement string"));
            }
        }
        rest = &rest[at + 2..];
    }
    grow(out, rest)
}

/// Script errors (bad arguments, malformed patterns, errors of replacement
/// functions) come back as `(fail, message)` for `sandbox.lua` to raise as
/// plain strings, as the C functions do; mlua would raise them as userdata.
/// The time and memory limits stay errors.
fn script_errors(
    lua: &Lua,
    fail: &Table,
    result: mlua::Result<MultiValue>,
) -> mlua::Result<MultiValue> {
    match result {
        Ok(values) => Ok(values),
        Err(e) if Clock::expired() || is_memory_error(&e) => Err(e),
        Err(e) => {
            let message = lua.create_string(first_line(&error_message(&e)))?;
            Ok(MultiValue::from_iter([
                Value::Table(fail.clone()),
                Value::String(message),
            ]))
        }
    }
}

/// Adds `find`, `match`, `gmatch` and `gsub` to the host table, with the
/// `pattern_fail` marker. `budget` says how many bytes the run may still
/// allocate.
pub fn install(
    lua: &Lua,
    host: &Table,
    budget: impl Fn(&Lua) -> usize + 'static,
) -> mlua::Result<()> {
    let fail = lua.create_table()?;
    host.set("pattern_fail", fail.clone())?;
    let marker = fail.clone();
    host.set(
        "find",
        lua.create_function(move |lua, args: MultiValue| {
            script_errors(lua, &marker, find_aux(lua, args, true))
        })?,
    )?;
    let marker = fail.clone();
    host.set(
        "match",
        lua.create_function(move |lua, args: MultiValue| {
            script_errors(lua, &marker, find_aux(lua, args, false))
        })?,
    )?;
    let marker = fail.clone();
    host.set(
        "gmatch",
        lua.create_function(move |lua, args: MultiValue| {
            let iterator = gmatch(lua, args, marker.clone())
                .map(|f| MultiValue::from_iter([Value::Function(f)]));
            script_errors(lua, &marker, iterator)
        })?,
    )?;
    host.set(
        "gsub",
        lua.create_function(move |lua, args: MultiValue| {
            script_errors(lua, &fail, gsub(lua, args, &budget))
        })?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The port answers as C Lua's own functions do, on the cases of Lua's
    /// test suite that matter (pm.lua) and more.
    #[test]
    fn the_port_agrees_with_c_lua() {
        let lua = Lua::new();
        let host = lua.create_table().unwrap();
        install(&lua, &host, |_| usize::MAX).unwrap();
        lua.globals().set("host", host).unwrap();
        let mismatches: Vec<String> = lua
            .load(
                r#"
local FAIL = host.pattern_fail
local function call(f, ...)
  local r = table.pack(pcall(f, ...))
  if r[1] and rawequal(r[2], FAIL) then return "error" end
  if not r[1] then return "error" end
  local out = {}
  for i = 2, r.n do out[#out + 1] = type(r[i]) .. ":" .. tostring(r[i]) end
  return table.concat(out, ",")
end
local function gm(gmatch, s, p, init)
  local ok, it = pcall(gmatch, s, p, init)
  if not ok or rawequal(it, FAIL) then return "error" end
  local out = {}
  for _ = 1, 50 do
    local r = table.pack(pcall(it))
    if not r[1] or rawequal(r[2], FAIL) then out[#out + 1] = "error" break end
    if r.n == 1 then break end
    for i = 2, r.n do out[#out + 1] = tostring(r[i]) end
    out[#out + 1] = ";"
  end
  return table.concat(out, ",")
end
local subjects = {
  "", "a", "aaa", "hello world", "  trim me  ", "key=val; k2=v2", "THE (quick) fox",
  "f(a(b)c)d", "x\0y\0z", "0123456789abcdefABCDEF", "alo xyzK", "254 K", "a$b^c",
  "[[]] [][] [x]", "THE END\n\tnext", "  \v\f\r\n", "aaab", "ab.cd", "%a%%b",
}
local patterns = {
  "", "a", "a*", "a+", "a-", "a?", "^a", "a$", "^$", ".", ".-", ".+", "%s*(.-)%s*$",
  "^%s*(.-)%s*$", "(%w+)=(%w+)", "%((%a+)%)", "%b()", "%f[%w]%w+", "()ll()", "(a)%1",
  "[%a%d]+", "[^%s]+", "[a-f]+", "[]]", "[^]]+", "%d+", "%x+", "%u+", "%l+", "%p",
  "%c", "%g+", "%z", "\0", "%S+", "%W", "(h)(e)(l)(l)(o)", "()", "(()a*())", "%.",
  "[", "[a", "%", "(", ")", "%1", "(()", "%b", "%f", "%fx", "[%", "a%", "x*$",
  "^(%d+)%s+(%a)", "b*", "[.]", "%$", "^%^?%w*", "(.)%1", "[a-]", "[-a]", "[%]]",
  "%w-%.", "[%w_]+", "o w", "a.b", "%%",
}
local bad = {}
local c_find, c_match, c_gmatch, c_gsub = string.find, string.match, string.gmatch, string.gsub
for _, s in ipairs(subjects) do
  for _, p in ipairs(patterns) do
    for _, init in ipairs({1, 2, -3, 100}) do
      for name, pair in pairs({
        find = {c_find, host.find}, match = {c_match, host.match},
      }) do
        local want, got = call(pair[1], s, p, init), call(pair[2], s, p, init)
        if want ~= got then bad[#bad + 1] = name .. "(" .. string.format("%q", s) .. ", " .. string.format("%q", p) .. ", " .. init .. ") = " .. got .. " want " .. want end
      end
      local want, got = call(c_find, s, p, init, true), call(host.find, s, p, init, true)
      if want ~= got then bad[#bad + 1] = "plain find " .. string.format("%q %q", s, p) .. " " .. got .. " want " .. want end
      want, got = gm(c_gmatch, s, p, init), gm(host.gmatch, s, p, init)
      if want ~= got then bad[#bad + 1] = "gmatch " .. string.format("%q %q", s, p) .. " " .. got .. " want " .. want end
    end
    for _, repl in ipairs({"<%0>", "%1", "%%", "x", "%2", "%", 7, {a = "A", h = false}, function(c) return c and c:upper() end}) do
      for _, n in ipairs({nil, 1}) do
        local want, got = call(c_gsub, s, p, repl, n), call(host.gsub, s, p, repl, n)
        if want ~= got then bad[#bad + 1] = "gsub " .. string.format("%q %q", s, p) .. " " .. tostring(repl) .. " " .. got .. " want " .. want end
      end
    end
  end
end
return bad
"#,
            )
            .eval()
            .unwrap();
        assert!(
            mismatches.is_empty(),
            "{} mismatches:\n{}",
            mismatches.len(),
            mismatches[..mismatches.len().min(20)].join("\n")
        );
    }
}
