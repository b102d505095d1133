//! The sandbox on its own, without HTTP or the pool: one state, runs in
//! sequence, so isolation between runs is tested deterministically.

use std::time::{Duration, Instant};

use super::*;
use crate::lua::ScriptName;

/// A time limit that no test but those of the time limit comes near, even
/// on a loaded machine.
const LIMITS: Limits = Limits {
    memory: 4 * 1024 * 1024,
    time: Duration::from_secs(10),
};

/// For the tests of the time limit.
const TIME_LIMITS: Limits = Limits {
    memory: 4 * 1024 * 1024,
    time: Duration::from_millis(100),
};

fn sandbox(scripts: &[(&str, &str)]) -> Sandbox {
    Sandbox::new(&Scripts::from_sources(scripts.iter().copied()), LIMITS)
        .expect("the sandbox starts")
}

fn timed_sandbox(scripts: &[(&str, &str)]) -> Sandbox {
    Sandbox::new(&Scripts::from_sources(scripts.iter().copied()), TIME_LIMITS)
        .expect("the sandbox starts")
}

fn target(name: &str) -> Target {
    Target::Script(ScriptName::parse(name).unwrap())
}

fn run(sandbox: &mut Sandbox, name: &str) -> Result<LuaResponse, RunError> {
    run_with(sandbox, name, &LuaRequest::default())
}

fn run_with(
    sandbox: &mut Sandbox,
    name: &str,
    request: &LuaRequest,
) -> Result<LuaResponse, RunError> {
    let result = sandbox.run(&target(name), request);
    sandbox.tidy();
    result
}

/// The body of a successful run.
fn answer(sandbox: &mut Sandbox, name: &str) -> String {
    let response = run(sandbox, name).unwrap_or_else(|e| panic!("{name} failed: {e}"));
    String::from_utf8(response.body).unwrap()
}

/// Runs one script and returns its answer.
fn eval(source: &str) -> String {
    answer(&mut sandbox(&[("probe", source)]), "probe")
}

fn failure(source: &str) -> RunError {
    run(&mut sandbox(&[("probe", source)]), "probe").expect_err("the run fails")
}

fn header<'a>(response: &'a LuaResponse, name: &str) -> Vec<&'a str> {
    response
        .headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.to_str().unwrap())
        .collect()
}

#[test]
fn the_inline_chunk_says_hello_world() {
    let mut sb = sandbox(&[]);
    let response = sb.run(&Target::Hello, &LuaRequest::default()).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"hello world");
    assert_eq!(
        header(&response, "content-type"),
        ["text/plain; charset=utf-8"]
    );
}

#[test]
fn the_request_table_follows_the_contract() {
    let mut sb = sandbox(&[(
        "echo",
        "response(table.concat({request.method, request.path, request.query.a, request.query.b, \
         request.headers['x-multi'], request.headers.accept, request.body, type(request.query.zzz)}, '|'))",
    )]);
    let request = LuaRequest {
        method: "PATCH".into(),
        path: "/lua/echo".into(),
        query: vec![
            ("a".into(), "first".into()),
            ("b".into(), "✓".into()),
            ("a".into(), "second".into()),
        ],
        headers: vec![
            ("x-multi".into(), b"one".to_vec()),
            ("accept".into(), b"*/*".to_vec()),
            ("x-multi".into(), b"two".to_vec()),
        ],
        body: "héllo".as_bytes().to_vec(),
    };
    let response = run_with(&mut sb, "echo", &request).unwrap();
    assert_eq!(
        String::from_utf8(response.body).unwrap(),
        "PATCH|/lua/echo|first|✓|one, two|*/*|héllo|nil"
    );
}

#[test]
fn response_takes_status_and_headers() {
    let mut sb = sandbox(&[(
        "teapot",
        "response('short and stout', 418, {['X-Kind'] = 'teapot', ['set-cookie'] = {'a=1', 'b=2'}, \
         ['content-type'] = 'text/x-tea', ['x-number'] = 7})",
    )]);
    let response = run(&mut sb, "teapot").unwrap();
    assert_eq!(response.status, 418);
    assert_eq!(response.body, b"short and stout");
    assert_eq!(header(&response, "x-kind"), ["teapot"]);
    assert_eq!(header(&response, "set-cookie"), ["a=1", "b=2"]);
    assert_eq!(header(&response, "content-type"), ["text/x-tea"]);
    assert_eq!(header(&response, "x-number"), ["7"]);
}

#[test]
fn bad_response_arguments_are_script_errors_with_a_line() {
    let cases = [
        ("\nresponse('x', 99)", "status"),
        ("\nresponse('x', 200.5)", "status"),
        ("\nresponse({})", "body must be a string"),
        (
            "\nresponse('x', 200, {['content-length'] = '1'})",
            "set by the server",
        ),
        (
            "\nresponse('x', 200, {['bad name'] = 'v'})",
            "invalid header name",
        ),
        (
            "\nresponse('x', 200, {['x-ok'] = 'line\\nbreak'})",
            "invalid value",
        ),
        ("\nresponse('x') response('y')", "already called"),
    ];
    for (source, expected) in cases {
        match failure(source) {
            RunError::Script { script, message } => {
                assert_eq!(script, "probe.lua");
                assert!(
                    message.starts_with("probe.lua:2: response: "),
                    "{source}: {message}"
                );
                assert!(message.contains(expected), "{source}: {message}");
            }
            other => panic!("{source}: {other:?}"),
        }
    }
}

#[test]
fn a_script_that_never_responds_is_an_error() {
    assert!(matches!(
        failure("local x = 1"),
        RunError::NoResponse { .. }
    ));
}

#[test]
fn script_errors_name_the_file_and_line_only() {
    let RunError::Script { message, .. } = failure("local t = nil\n\nreturn t.field") else {
        panic!("not a script error")
    };
    assert!(
        message.starts_with("probe.lua:3: attempt to index"),
        "{message}"
    );
    assert!(!message.contains('/'), "{message}");
    assert!(!message.contains("traceback"), "{message}");

    let RunError::Script { message, .. } = failure(&format!("error('{}')", "x".repeat(5000)))
    else {
        panic!("not a script error")
    };
    assert!(
        message.chars().count() <= MAX_DETAIL + 1,
        "the detail is cut"
    );
}

#[test]
fn a_script_that_does_not_compile_is_named_with_its_line() {
    let scripts =
        Scripts::from_sources([("fine", "response 'ok'"), ("broken", "local x = 1\nx +")]);
    let err = Sandbox::new(&scripts, LIMITS)
        .err()
        .expect("compilation fails");
    let text = err.to_string();
    assert!(text.contains("broken.lua:2:"), "{text}");
    assert!(!text.contains("traceback"), "{text}");
}

#[test]
fn binary_chunks_are_refused_at_start_up() {
    let scripts = Scripts::from_sources([("bin", "\x1bLua\x54\x00")]);
    let err = Sandbox::new(&scripts, LIMITS)
        .err()
        .expect("a binary chunk is refused");
    assert!(err.to_string().contains("binary"), "{err}");
}

// --- The time limit -------------------------------------------------------

fn assert_time_limit(source: &str) {
    let mut sb = timed_sandbox(&[("spin", source), ("ok", "response 'ok'")]);
    let start = Instant::now();
    let err = run(&mut sb, "spin").expect_err("the spin is stopped");
    assert!(
        matches!(err, RunError::TimeLimit { .. }),
        "{source}: {err:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{source} ended late"
    );
    // The state is still usable afterwards.
    assert_eq!(answer(&mut sb, "ok"), "ok");
}

#[test]
fn an_endless_loop_hits_the_time_limit() {
    assert_time_limit("while true do end");
}

#[test]
fn pcall_cannot_swallow_the_time_limit() {
    assert_time_limit("while true do pcall(function() while true do end end) end");
}

#[test]
fn xpcall_cannot_swallow_the_time_limit() {
    assert_time_limit(
        "while true do xpcall(function() while true do end end, function(e) return e end) end",
    );
}

#[test]
fn a_spinning_message_handler_hits_the_time_limit() {
    assert_time_limit("while true do xpcall(error, function() while true do end end) end");
}

#[test]
fn coroutines_cannot_escape_the_time_limit() {
    assert_time_limit("coroutine.wrap(function() while true do end end)()");
    assert_time_limit(
        "while true do coroutine.resume(coroutine.create(function() while true do end end)) end",
    );
}

#[test]
fn a_spinning_close_handler_hits_the_time_limit() {
    assert_time_limit(
        "local x <close> = setmetatable({}, {__close = function() while true do end end}) error('boom')",
    );
}

#[test]
fn a_coroutines_close_handler_cannot_escape_the_time_limit() {
    // A hook error leaves a coroutine with hooks off; closing it then runs
    // its pending __close handlers.
    let spin_with_close_handler = "function()
        local x <close> = setmetatable({}, {__close = function() while true do end end})
        while true do end
      end";
    assert_time_limit(&format!("coroutine.wrap({spin_with_close_handler})()"));
    assert_time_limit(&format!(
        "local co = coroutine.create({spin_with_close_handler}) coroutine.resume(co)"
    ));
    assert_time_limit(&format!(
        "local co = coroutine.create({spin_with_close_handler})
         local guard <close> = setmetatable({{}}, {{__close = function() coroutine.close(co) end}})
         coroutine.resume(co)"
    ));
    // And on the main thread.
    assert_time_limit(
        "local x <close> = setmetatable({}, {__close = function() while true do end end}) while true do end",
    );
}

#[test]
fn a_load_reader_cannot_swallow_the_time_limit() {
    assert_time_limit("while true do load(function() while true do end end) end");
}

#[test]
fn a_tostring_metamethod_on_an_error_cannot_escape_the_time_limit() {
    assert_time_limit("error(setmetatable({}, {__tostring = function() while true do end end}))");
}

#[test]
fn library_loops_are_bounded_where_the_hook_cannot_see() {
    // Each of these would loop in C, for ever in practice, without a
    // single VM instruction for the hook to count.
    assert_eq!(
        eval("response('[' .. (''):rep(1e18) .. ('x'):rep(0) .. ']')"),
        "[]"
    );
    assert!(matches!(
        failure("table.move({}, 1, 1e15, 2)"),
        RunError::Script { message, .. } if message.contains("too many elements")
    ));
    assert_time_limit(
        "table.insert(setmetatable({}, {__len = function() return 1e15 end}), 1, 'x')",
    );
    assert_time_limit("table.remove(setmetatable({}, {__len = function() return 1e15 end}), 1)");
}

#[test]
fn table_insert_and_remove_keep_their_meaning() {
    assert_eq!(
        eval(
            "local t = {'b', 'd'}
             table.insert(t, 1, 'a') table.insert(t, 3, 'c') table.insert(t, 'e') table.insert(t, 6, 'f')
             local last = table.remove(t) local first = table.remove(t, 1) local mid = table.remove(t, 2)
             local empty = {} local none = table.remove(empty, 1) local zero = table.remove(empty, #empty)
             local ok1 = pcall(table.insert, t, 9, 'x') local ok2 = pcall(table.remove, t, 9)
             local ok3 = pcall(table.insert, t, 1.5, 'x') local ok4 = pcall(table.insert, t, 1, 'x', 'y')
             local moved = table.move({1, 2, 3}, 1, 3, 2)
             response(table.concat(t, ',') .. ' ' .. last .. first .. mid .. ' ' .. tostring(none) .. tostring(zero)
               .. ' ' .. tostring(ok1) .. tostring(ok2) .. tostring(ok3) .. tostring(ok4)
               .. ' ' .. table.concat(moved, ','))"
        ),
        "b,d,e fac nilnil falsefalsefalsefalse 1,1,2,3"
    );
}

#[test]
fn deep_recursion_is_an_error_not_a_crash() {
    // Through C (pcall, gsub, metamethods) Lua stops at 200 levels; in Lua
    // itself at its stack limit or the memory limit. The worker's stack
    // holds either way.
    assert_eq!(
        eval(
            "local function f(n) local ok = pcall(f, n + 1) return n end f(1) response('survived')"
        ),
        "survived"
    );
    assert_eq!(
        eval("local function g(s) return (s:gsub('.', g)) end pcall(g, 'xx') response('survived')"),
        "survived"
    );
    let err = failure("local function f() return 1 + f() end f()");
    assert!(
        matches!(err, RunError::Script { .. } | RunError::MemoryLimit { .. }),
        "{err:?}"
    );
    let nested = format!(
        "response(json.encode(json.decode('{}1{}')))",
        "[".repeat(100),
        "]".repeat(100)
    );
    assert_eq!(
        eval(&nested),
        format!("{}1{}", "[".repeat(100), "]".repeat(100))
    );
    let RunError::Script { message, .. } =
        failure(&format!("json.decode('{}')", "[".repeat(100_000)))
    else {
        panic!("deep JSON was accepted")
    };
    assert!(message.contains("recursion limit"), "{message}");
}

// --- The memory limit -----------------------------------------------------

fn assert_memory_limit(source: &str) {
    let mut sb = sandbox(&[("hog", source), ("ok", "response 'ok'")]);
    let err = run(&mut sb, "hog").expect_err("the hog is stopped");
    assert!(
        matches!(err, RunError::MemoryLimit { .. }),
        "{source}: {err:?}"
    );
    assert_eq!(answer(&mut sb, "ok"), "ok");
}

#[test]
fn a_growing_table_hits_the_memory_limit() {
    assert_memory_limit("local t = {} while true do t[#t + 1] = ('x'):rep(1024) .. #t end");
}

#[test]
fn a_huge_string_hits_the_memory_limit() {
    assert_memory_limit("local s = ('x'):rep(64 * 1024 * 1024) response(#s)");
}

#[test]
fn json_decode_counts_against_the_memory_limit() {
    // A 1.2 MB document that decodes into a 600 000-slot table (~10 MB).
    let doc = "local doc = '[' .. ('0,'):rep(600000) .. '0]'";
    let caught = eval(&format!(
        "{doc} local ok, err = pcall(json.decode, doc) response(tostring(ok) .. ' ' .. tostring(err))"
    ));
    assert!(
        caught.starts_with("false") && caught.contains("memory"),
        "{caught}"
    );
    assert_memory_limit(&format!("{doc} response(#json.decode(doc))"));
}

#[test]
fn the_memory_budget_is_per_run() {
    // Each run may use a good part of its budget (string.rep needs twice
    // the string's size at its peak): garbage from earlier runs is not held
    // against later ones.
    let mut sb = sandbox(&[("big", "local s = ('x'):rep(1536 * 1024) response(#s)")]);
    for _ in 0..5 {
        assert_eq!(answer(&mut sb, "big"), (1536 * 1024).to_string());
    }
}

// --- Isolation between runs -------------------------------------------------

#[test]
fn globals_do_not_leak_between_runs() {
    let mut sb = sandbox(&[
        (
            "set",
            "leaked = 'secret' _G.also = 1 _ENV.again = 2 response(leaked)",
        ),
        (
            "get",
            "response(tostring(leaked) .. tostring(also) .. tostring(again))",
        ),
    ]);
    assert_eq!(answer(&mut sb, "set"), "secret");
    assert_eq!(answer(&mut sb, "get"), "nilnilnil");
}

#[test]
fn string_metatable_tampering_does_not_carry_over() {
    let mut sb = sandbox(&[
        (
            "tamper",
            "local mt = getmetatable('')
             mt.__index.upper = function() return 'pwned' end
             rawset(string, 'lower', function() return 'pwned' end)
             mt.__add = function() return 'pwned' end
             mt.__len = function() return -1 end
             response(('x'):upper() .. string.lower('Y'))",
        ),
        (
            "check",
            "local ok = pcall(function() return 'a' + 'b' end)
             response(('x'):upper() .. string.lower('Y') .. tostring(getmetatable('').__add) .. tostring(ok))",
        ),
    ]);
    assert_eq!(
        answer(&mut sb, "tamper"),
        "pwnedpwned",
        "tampering works within the run"
    );
    assert_eq!(answer(&mut sb, "check"), "Xynilfalse");
}

#[test]
fn replacing_the_string_metatable_index_does_not_carry_over() {
    let mut sb = sandbox(&[
        (
            "tamper",
            "getmetatable('').__index = {upper = function() return 'pwned' end} response(('x'):upper())",
        ),
        ("check", "response(('x'):upper())"),
    ]);
    assert_eq!(answer(&mut sb, "tamper"), "pwned");
    assert_eq!(answer(&mut sb, "check"), "X");
}

#[test]
fn library_tampering_does_not_carry_over() {
    let mut sb = sandbox(&[
        (
            "tamper",
            "table.insert = nil math.pi = 3 os.time = nil coroutine.wrap = nil json.encode = nil
             pcall = nil rawset(utf8, 'char', nil) response('done')",
        ),
        (
            "check",
            "local t = {} table.insert(t, 'ok')
             response(t[1] .. math.pi .. type(os.time) .. type(coroutine.wrap) .. type(json.encode) \
             .. type(pcall) .. utf8.char(0x2713))",
        ),
    ]);
    assert_eq!(answer(&mut sb, "tamper"), "done");
    assert_eq!(
        answer(&mut sb, "check"),
        "ok3.1415926535898functionfunctionfunctionfunction✓"
    );
}

#[test]
fn math_random_cannot_be_seeded_for_the_next_run() {
    let mut sb = sandbox(&[
        (
            "seeded",
            "math.randomseed(42) response(tostring(math.random(1 << 40)))",
        ),
        ("seed", "math.randomseed(42) response('seeded')"),
        ("draw", "response(tostring(math.random(1 << 40)))"),
    ]);
    let predicted = answer(&mut sb, "seeded");
    assert_eq!(answer(&mut sb, "seed"), "seeded");
    assert_ne!(answer(&mut sb, "draw"), predicted);
}

#[test]
fn finalizers_are_refused() {
    let RunError::Script { message, .. } = failure("setmetatable({}, {__gc = function() end})")
    else {
        panic!("__gc was accepted")
    };
    assert!(message.contains("__gc"), "{message}");
}

#[test]
fn a_run_left_in_a_coroutine_does_not_disturb_the_next() {
    let mut sb = sandbox(&[
        (
            "park",
            "leaked = 1 local co = coroutine.create(function() coroutine.yield() end) coroutine.resume(co) response('parked')",
        ),
        ("check", "response(tostring(leaked))"),
    ]);
    assert_eq!(answer(&mut sb, "park"), "parked");
    assert_eq!(answer(&mut sb, "check"), "nil");
}

// --- What is reachable ---------------------------------------------------------

#[test]
fn the_environment_holds_exactly_the_safe_names() {
    // Walks everything reachable from _ENV and from the string metatable.
    let listing = eval(
        "local seen, names = {}, {}
         local function walk(t, prefix)
           if seen[t] then return end
           seen[t] = true
           for k, v in pairs(t) do
             local name = prefix .. tostring(k)
             names[#names + 1] = name
             if type(v) == 'table' and name ~= '_G' then walk(v, name .. '.') end
           end
         end
         walk(_ENV, '')
         walk(getmetatable(''), 'string_mt.')
         table.sort(names)
         response(table.concat(names, ' '))",
    );
    let names: Vec<&str> = listing.split(' ').collect();
    let top: Vec<&str> = names.iter().copied().filter(|n| !n.contains('.')).collect();
    assert_eq!(
        top,
        [
            "_G",
            "_VERSION",
            "assert",
            "coroutine",
            "error",
            "getmetatable",
            "ipairs",
            "json",
            "load",
            "log",
            "math",
            "next",
            "os",
            "pairs",
            "pcall",
            "print",
            "rawequal",
            "rawget",
            "rawlen",
            "rawset",
            "request",
            "response",
            "select",
            "setmetatable",
            "string",
            "table",
            "tonumber",
            "tostring",
            "type",
            "utf8",
            "xpcall",
        ]
    );
    let os: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| n.starts_with("os."))
        .collect();
    assert_eq!(os, ["os.clock", "os.date", "os.difftime", "os.time"]);
    // Not in any library either (string.dump, or through the string metatable).
    for forbidden in [
        "io",
        "debug",
        "package",
        "require",
        "dofile",
        "loadfile",
        "collectgarbage",
        "dump",
        "loadstring",
        "warn",
    ] {
        assert!(
            !names
                .iter()
                .any(|n| n.rsplit('.').next() == Some(forbidden)),
            "{forbidden} is reachable: {listing}"
        );
    }
    assert!(
        names.contains(&"string_mt.__index"),
        "the walk reaches the string metatable"
    );
}

#[test]
fn load_takes_text_in_the_runs_environment() {
    assert_eq!(
        eval("local f, err = load('\\27Lua\\84\\0') response(tostring(f) .. ' ' .. err)"),
        "nil attempt to load a binary chunk (mode is 't')"
    );
    assert_eq!(
        eval("local f, err = load('\\27Lua\\84\\0', 'x', 'b') response(tostring(f) .. ' ' .. err)"),
        "nil attempt to load a binary chunk (mode is 't')"
    );
    assert_eq!(eval("load('x = 41')() response(tostring(x + 1))"), "42");
    assert_eq!(
        eval("response(tostring(load('return io or debug or require')()))"),
        "nil"
    );
    assert_eq!(
        eval(
            "local env = {} load('y = 1', 'c', 't', env)() response(tostring(env.y) .. tostring(y))"
        ),
        "1nil"
    );
}

#[test]
fn error_values_raised_by_the_host_hide_their_metatable() {
    assert_eq!(
        eval(
            "local ok, e = pcall(response, 'x', 1) response(type(getmetatable(e)) .. ' ' .. tostring(ok))"
        ),
        "boolean false"
    );
}

// --- json -------------------------------------------------------------------------

#[test]
fn json_round_trips() {
    assert_eq!(
        eval(
            r#"local v = json.decode('{"a":[1,2.5,"✓",true,null,{}],"b":{"c":[]},"n":null}')
               response(json.encode(v))"#
        ),
        r#"{"a":[1,2.5,"✓",true,null,{}],"b":{"c":[]},"n":null}"#
    );
    assert_eq!(
        eval("response(json.encode({z = 1, a = {1, 2, 3}, [5] = 'five', e = {}}))"),
        r#"{"5":"five","a":[1,2,3],"e":{},"z":1}"#
    );
    assert_eq!(
        eval("local v = json.decode('[1,null,3]') response(#v .. tostring(v[2] == json.null))"),
        "3true"
    );
    assert_eq!(
        eval("response(json.encode(request))"),
        r#"{"body":"","headers":{},"method":"","path":"","query":{}}"#
    );
}

#[test]
fn json_errors_are_script_errors_with_a_line() {
    for (source, expected) in [
        (
            "\njson.decode('{nope')",
            "json.decode: key must be a string",
        ),
        ("\njson.decode(42)", "json.decode: expected a string"),
        (
            "\nlocal t = {} t.t = t json.encode(t)",
            "json.encode: tables nested deeper",
        ),
        (
            "\njson.encode({f = print})",
            "json.encode: cannot encode a function",
        ),
        ("\njson.encode(0/0)", "json.encode: cannot encode NaN"),
        (
            "\njson.encode('\\255')",
            "json.encode: cannot encode a string that is not UTF-8",
        ),
    ] {
        match failure(source) {
            RunError::Script { message, .. } => {
                assert!(message.starts_with("probe.lua:2: "), "{source}: {message}");
                assert!(message.contains(expected), "{source}: {message}");
            }
            other => panic!("{source}: {other:?}"),
        }
    }
}

#[test]
fn json_output_is_capped_at_the_memory_limit() {
    // A table that refers to the same string many times: small in Lua,
    // huge as text.
    // The text counts against the run's memory limit: breaking it is a
    // memory limit hit.
    assert_memory_limit(
        "local s = ('x'):rep(1024 * 1024) local t = {} for i = 1, 64 do t[i] = s end json.encode(t)",
    );
}

#[test]
fn the_json_array_marker_is_protected() {
    assert_eq!(
        eval(
            "local a = json.decode('[]')
             local ok = pcall(setmetatable, a, nil)
             response(tostring(getmetatable(a)) .. ' ' .. tostring(ok))"
        ),
        "json.array false"
    );
}

#[test]
fn print_and_log_accept_anything() {
    assert_eq!(
        eval(
            "print('a', 1, nil, {}, true) log('message') log(nil) log(setmetatable({}, {__tostring = function() return 't' end})) response('logged')"
        ),
        "logged"
    );
}

// --- Hostile scripts: every limit holds ---------------------------------------
//
// Each of these got past a limit before: the run ended late or never, or
// the host copied unbounded memory out of it. A bound of several times the
// limit keeps the tests honest on a loaded machine.

/// A table of about 1.9 billion elements that holds none: its length comes
/// from `os.time` (a C function reading fields through `__index`), its
/// elements from `type` (a C function), and writes go to `rawequal`.
const VIRTUAL_HUGE: &str = "local idx = setmetatable({year = 2030, month = 1, day = 1, hour = 0, min = 0, sec = 0}, {__index = type})
     local huge = setmetatable({}, {__index = idx, __len = os.time, __newindex = rawequal})";

fn assert_time_limit_within(source: &str, bound: Duration) {
    let mut sb = timed_sandbox(&[("spin", source), ("ok", "response 'ok'")]);
    let start = Instant::now();
    let err = run(&mut sb, "spin").expect_err("the run is stopped");
    let elapsed = start.elapsed();
    assert!(
        matches!(err, RunError::TimeLimit { .. }),
        "{source}: {err:?}"
    );
    assert!(elapsed < bound, "{source} ended after {elapsed:?}");
    assert_eq!(answer(&mut sb, "ok"), "ok");
}

const BOUND: Duration = Duration::from_secs(2);

#[test]
fn c_library_loops_through_c_metamethods_hit_the_time_limit() {
    for body in [
        "table.sort(huge, rawequal)",
        "table.sort(huge)",
        // 20,000 values fit the 4 MiB limit: 200,000 ran out of memory
        // before time on an idle machine.
        "for _ = 1, 1e9 do table.unpack(huge, 1, 20000) end",
        "while true do table.move(huge, 1, 100000, 1, huge) end",
        "coroutine.wrap(function() table.sort(huge, rawequal) end)()",
        "local x <close> = setmetatable({}, {__close = function() table.sort(huge, rawequal) end}) error('x')",
        "xpcall(error, function() table.sort(huge, rawequal) end)",
        "while true do pcall(table.sort, huge, rawequal) end",
        "tostring(setmetatable({}, {__tostring = function() table.sort(huge, rawequal) end}))",
        "string.format('%s', setmetatable({}, {__tostring = function() table.sort(huge, rawequal) end}))",
    ] {
        assert_time_limit_within(&format!("{VIRTUAL_HUGE}\n{body}"), BOUND);
    }
}

#[test]
fn comparing_long_strings_hits_the_time_limit() {
    // One comparison of megabytes is one VM instruction.
    assert_time_limit_within(
        "local s = ('x'):rep(1 << 20) local t = s:sub(2) .. 'x'
         while true do local _ = s < t end",
        BOUND,
    );
    assert_time_limit_within(
        "local s = ('x'):rep(1 << 20) local t = s:sub(2) .. 'x'
         while true do local _ = s == t end",
        BOUND,
    );
    // table.sort without a comparator compares in C.
    assert_time_limit_within(
        "local s = ('x'):rep(1 << 20) local t = {} for i = 1, 100000 do t[i] = s end table.sort(t)",
        BOUND,
    );
}

#[test]
fn backtracking_patterns_hit_the_time_limit() {
    let spaces = "local body = 'x' .. (' '):rep(65536) .. 'x' local as = ('a'):rep(65536)";
    for body in [
        "body:match('^%s*(.-)%s*$')",
        "string.find(as, '.-.-.-.-b')",
        "as:match('(.-)(.-)(.-)(.-)b')",
        "for _ in as:gmatch('a-a-a-b') do end",
        "as:gsub('.-.-.-b', 'x')",
        "body:find('%s*%s*%s*y')",
        "as:find('(a*)*b')",
        "for _ = 1, 1e9 do as:find(('a'):rep(30000) .. 'b', 1, true) end",
    ] {
        assert_time_limit_within(&format!("{spaces}\n{body}"), BOUND);
    }
}

#[test]
fn patterns_still_work() {
    assert_eq!(
        eval(
            "local t = {}
             t[#t+1] = ('  hi  '):match('^%s*(.-)%s*$')
             t[#t+1] = select(2, ('hello world'):gsub('o', '0'))
             t[#t+1] = ('hello world'):gsub('(%w+)', '<%1>')
             t[#t+1] = ('key=val'):gsub('(%w+)=(%w+)', '%2=%1')
             t[#t+1] = ('abc'):gsub('%w', {a = 'A', b = true and 'B'})
             t[#t+1] = ('abc'):gsub('%w', function(c) return c:upper() .. '.' end)
             t[#t+1] = tostring(('a.b'):find('.', 1, true))
             t[#t+1] = tostring(('THE (quick) fox'):find('%((%a+)%)'))
             for k, v in ('a=1, b=2'):gmatch('(%w+)=(%w+)') do t[#t+1] = k .. v end
             t[#t+1] = tostring(('hello'):match('()ll()'))
             t[#t+1] = ('f(a(b)c)'):match('%b()')
             t[#t+1] = ('THE END'):gsub('%f[%w]%w+', 'W')
             local ok, err = pcall(string.find, 'x', '[a')
             t[#t+1] = tostring(ok) .. ':' .. err
             response(table.concat(t, '|'))"
        ),
        "hi|2|<hello> <world>|val=key|ABc|A.B.C.|2|5|a1|b2|3|(a(b)c)|W W|false:probe.lua:14: malformed pattern (missing ']')"
    );
}

#[test]
fn the_hosts_copies_count_against_the_memory_limit() {
    // A header list repeating one big string: small in Lua, huge copied.
    assert_memory_limit(
        "local s = ('x'):rep(1 << 20) local list = {} for i = 1, 200 do list[i] = s end
         response('ok', 200, {['x-big'] = list})",
    );
    // A million empty header values.
    assert_memory_limit(
        "local list = {} for i = 1, 150000 do list[i] = '' end response('ok', 200, {['x-many'] = list})",
    );
    // A body larger than what the run has left.
    assert_memory_limit("response(('x'):rep(3 << 20))");
    // json.encode of a table that contains itself under a long key, and
    // of one that contains itself under many keys.
    assert_memory_limit("local t = {} t[('k'):rep(1 << 20)] = t response(json.encode(t))");
    assert_memory_limit(
        "local t = {} for i = 1, 40000 do t['k' .. i] = t end response(json.encode(t))",
    );
    // gsub's result.
    assert_memory_limit("local s = ('x'):rep(1 << 16) response((s:gsub('x', ('y'):rep(1 << 10))))");
    // A body within the budget still goes out.
    assert_eq!(eval("response(('x'):rep(1 << 20))").len(), 1 << 20);
}

#[test]
fn math_random_differs_between_runs_on_the_same_state() {
    let mut sb = sandbox(&[("draw", "response(tostring(math.random(1 << 62)))")]);
    let first = answer(&mut sb, "draw");
    let second = answer(&mut sb, "draw");
    assert_ne!(
        first, second,
        "two runs within a second drew the same number"
    );
}

#[test]
fn load_refuses_chunks_over_the_cap() {
    assert_eq!(
        eval(&format!(
            "local f, err = load(('x = 1 '):rep({}))
             local n = 0
             local g, err2 = load(function() n = n + 1 if n < 100 then return ('y = 2 '):rep(1000) end end)
             response(tostring(f) .. ' ' .. err .. ' ' .. tostring(g) .. ' ' .. err2)",
            MAX_LOAD / 6 + 1
        )),
        format!(
            "nil chunk larger than {MAX_LOAD} bytes nil chunk larger than {MAX_LOAD} bytes"
        )
    );
    // Up to the cap, load works, even for a source that compiles in
    // quadratic time (a long `or` chain: each `or` walks the jump list).
    let start = Instant::now();
    assert_eq!(
        eval(&format!(
            "local src = 'return ' .. ('x or '):rep({}) .. '1'
             assert(#src <= {MAX_LOAD}) response(tostring(load(src)()))",
            (MAX_LOAD - 8) / 5
        )),
        "1"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn os_date_refuses_long_formats() {
    let err = failure("os.date(('%c'):rep(1000000))");
    assert!(
        matches!(&err, RunError::Script { message, .. } if message.contains("format longer")),
        "{err:?}"
    );
    assert_eq!(eval("response(os.date('!%Y', 0))"), "1970");
}

#[test]
fn log_output_is_capped_per_run() {
    let mut sb = sandbox(&[
        (
            "flood",
            "local s = ('x'):rep(8000) for i = 1, 100000 do log(s) print(i) end response('ok')",
        ),
        ("one", "log('x') response('ok')"),
    ]);
    assert_eq!(answer(&mut sb, "flood"), "ok");
    let logged = sb.run.logged.get();
    assert!(
        (MAX_LOG_PER_RUN..MAX_LOG_PER_RUN + MAX_LOG_LINE).contains(&logged),
        "{logged} bytes logged"
    );
    // The next run on the same state may log again.
    assert_eq!(answer(&mut sb, "one"), "ok");
    assert_eq!(sb.run.logged.get(), 1);
}
