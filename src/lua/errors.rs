//! What a Lua error says, for a run's answer and for host functions'
//! own errors.

use mlua::Lua;

/// An error raised by a host function, prefixed with the script position
/// that called it (`echo.lua:3: …`), as Lua's own `error` does.
pub fn located(lua: &Lua, message: &str) -> mlua::Error {
    // The first caller with a line that is not sandbox.lua's own wrapper.
    let position = (1..32).find_map(|level| {
        lua.inspect_stack(level, |frame| {
            let line = frame.current_line()?;
            let source = frame.source().short_src?.into_owned();
            (source != "sandbox").then(|| format!("{source}:{line}"))
        })
        .flatten()
    });
    match position {
        Some(position) => mlua::Error::runtime(format!("{position}: {message}")),
        None => mlua::Error::runtime(message),
    }
}

/// The error a host function raised, not mlua's wrappers around it.
fn root_cause(e: &mlua::Error) -> &mlua::Error {
    match e {
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => {
            root_cause(cause)
        }
        other => other,
    }
}

pub fn is_memory_error(e: &mlua::Error) -> bool {
    matches!(root_cause(e), mlua::Error::MemoryError(_))
}

/// Lua's message, without mlua's "runtime error: " prefix.
pub fn error_message(e: &mlua::Error) -> String {
    match root_cause(e) {
        mlua::Error::RuntimeError(m) | mlua::Error::MemoryError(m) => m.clone(),
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// The message without the stack traceback mlua appends.
pub fn first_line(message: &str) -> &str {
    message
        .split_once("\nstack traceback:")
        .map_or(message, |(head, _)| head)
        .trim_end()
}
