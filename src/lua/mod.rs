//! Sandboxed Lua scripting (placeholder; see the Lua issue).

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(pub String);

#[derive(Clone)]
pub struct LuaEngine;

impl LuaEngine {
    pub fn start(_config: &Config) -> Result<Self, LoadError> {
        Ok(LuaEngine)
    }
}
