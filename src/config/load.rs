//! Loading: TOML text, then `INBOXD__SECTION__KEY` environment overrides, then validation
//! that collects every problem (with its key path) instead of stopping at the first.

use std::collections::HashMap;
use std::path::Path;

use super::Config;
use super::error::{ConfigError, ConfigErrors};
use super::secrets::Secrets;
use super::{sections, tree};

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
