//! Loading: TOML text, then `INBOXD__SECTION__KEY` environment overrides, then validation
//! that collects every problem (with its key path) instead of stopping at the first.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use super::Config;
use super::secrets::Secrets;
use super::{sections, tree};

/// One problem in the configuration, located by its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Key path such as `mailboxes[1].poll_interval`; empty for problems with the whole file.
    pub path: String,
    /// What is wrong and, where possible, how to fix it. Never contains a secret value.
    pub message: String,
}

impl ConfigError {
    /// An error at `path`.
    pub(super) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a configuration, in the order the file lists the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The problems, one by one.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// One line per problem: `path: message`.
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads the TOML file at `path` and the process environment, then validates both with
/// [`from_sources`]. Relative `file:` secret paths are resolved against the file's folder.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        ConfigErrors(vec![ConfigError::new(
            "",
            format!("cannot read {}: {err}", path.display()),
        )])
    })?;
    // Variables whose name or value is not UTF-8 cannot be ours; skip them instead of panicking.
    let env: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let base_dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    from_sources(&text, &env, base_dir)
}

/// Builds a [`Config`] from TOML text and an environment map (injected, so tests never touch
/// the process environment). `INBOXD__SECTION__KEY` variables override keys; arrays of tables
/// are indexed: `INBOXD__MAILBOXES__0__POLL_INTERVAL`. The only I/O is reading `file:` secret
/// references, relative ones against `base_dir`.
pub fn from_sources(toml_text: &str, env: &HashMap<String, String>, base_dir: &Path) -> Result<Config, ConfigErrors> {
    let mut root = tree::parse_toml(toml_text).map_err(|err| ConfigErrors(vec![err]))?;
    let mut errors = Vec::new();
    tree::apply_env(&mut root, env, &mut errors);
    let secrets = Secrets::new(env, base_dir);
    let config = sections::build(&root, &secrets, &mut errors);
    match config {
        Some(config) if errors.is_empty() => Ok(config),
        _ => {
            if errors.is_empty() {
                errors.push(ConfigError::new("", "the configuration is invalid"));
            }
            Err(ConfigErrors(errors))
        }
    }
}
