//! The scripts directory: which files are scripts, and their sources, read
//! once at start-up.

use std::collections::BTreeMap;
use std::fmt;
use std::io::ErrorKind;
use std::path::Path;
use std::sync::Arc;

use super::LoadError;

/// A script name as it appears in `/lua/{name}`: `[A-Za-z0-9_-]{1,64}`.
/// Nothing else can name a file, so no path ever reaches the file system
/// from a request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScriptName(String);

impl ScriptName {
    pub const MAX_LEN: usize = 64;

    pub fn parse(name: &str) -> Option<Self> {
        let valid = (1..=Self::MAX_LEN).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        valid.then(|| Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name scripts are known by in messages: the file name, never the
    /// directory it lives in.
    pub fn file_name(&self) -> String {
        format!("{}.lua", self.0)
    }
}

impl fmt::Display for ScriptName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The scripts found at start-up, by name, with their source text.
#[derive(Debug, Default, Clone)]
pub struct Scripts {
    sources: BTreeMap<ScriptName, Arc<[u8]>>,
}

impl Scripts {
    /// Reads every `{name}.lua` file of `dir` whose name is a valid script
    /// name; other entries are ignored. A missing or unreadable directory is
    /// an error only when it was configured explicitly: the default
    /// `lua` directory is optional.
    pub fn load(dir: &Path, explicit: bool) -> Result<Self, LoadError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(source) if explicit => {
                return Err(LoadError::Dir {
                    dir: dir.to_owned(),
                    source,
                });
            }
            Err(e) => {
                if e.kind() == ErrorKind::NotFound {
                    tracing::info!(dir = %dir.display(), "no scripts directory: /lua/{{name}} serves no scripts");
                } else {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot read the scripts directory: /lua/{{name}} serves no scripts");
                }
                return Ok(Self::default());
            }
        };
        let mut sources = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(|source| LoadError::Dir {
                dir: dir.to_owned(),
                source,
            })?;
            let file_name = entry.file_name();
            let Some(name) = file_name
                .to_str()
                .and_then(|f| f.strip_suffix(".lua"))
                .and_then(ScriptName::parse)
            else {
                tracing::debug!(file = ?file_name, "not a script name: ignored");
                continue;
            };
            let path = entry.path();
            // Follows symbolic links, like the read below.
            if !path.metadata().is_ok_and(|m| m.is_file()) {
                tracing::debug!(file = ?file_name, "not a regular file: ignored");
                continue;
            }
            let source = std::fs::read(&path).map_err(|source| LoadError::Read {
                file: name.file_name(),
                source,
            })?;
            sources.insert(name, Arc::from(source));
        }
        tracing::info!(dir = %dir.display(), count = sources.len(), "Lua scripts loaded");
        Ok(Self { sources })
    }

    /// Scripts given in memory (tests, and the sandbox's own unit tests).
    pub fn from_sources<'a>(scripts: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let sources = scripts
            .into_iter()
            .map(|(name, source)| {
                let name = ScriptName::parse(name).expect("a valid script name");
                (name, Arc::from(source.as_bytes()))
            })
            .collect();
        Self { sources }
    }

    pub fn contains(&self, name: &ScriptName) -> bool {
        self.sources.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ScriptName, &[u8])> {
        self.sources.iter().map(|(name, source)| (name, &**source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_names_are_a_closed_alphabet() {
        for good in [
            "echo",
            "a",
            "hello-world",
            "snake_case",
            "A1",
            &"x".repeat(64),
        ] {
            assert!(ScriptName::parse(good).is_some(), "{good}");
        }
        for bad in [
            "",
            "../x",
            "x.lua",
            "a/b",
            "a b",
            "é",
            "%2e",
            ".",
            "..",
            &"x".repeat(65),
        ] {
            assert!(ScriptName::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn only_valid_lua_file_names_are_scripts() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str| std::fs::write(dir.path().join(name), "response 'x'").unwrap();
        write("good.lua");
        write("also_good-2.lua");
        write("bad name.lua");
        write("notes.txt");
        write("two.dots.lua");
        write(".lua");
        std::fs::create_dir(dir.path().join("folder.lua")).unwrap();

        let scripts = Scripts::load(dir.path(), true).unwrap();
        let names: Vec<_> = scripts.iter().map(|(n, _)| n.as_str().to_owned()).collect();
        assert_eq!(names, ["also_good-2", "good"]);
    }

    #[test]
    fn a_missing_directory_is_an_error_only_when_explicit() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(Scripts::load(&missing, false).unwrap().is_empty());
        let err = Scripts::load(&missing, true).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
