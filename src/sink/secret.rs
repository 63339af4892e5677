//! Secrets of the sinks (a bearer token, a database or broker password):
//! read from the configuration, an environment variable or a file when the
//! sink starts and again after a pause, so a rotated file or a fixed
//! environment is picked up without a restart. Never logged: the messages
//! name the source, not the value.

use std::path::Path;

use crate::config::SecretSource;

/// The secret, `None` when none is configured, or why it cannot be read.
/// `word` is the key's stem (`token`, `password`) for the messages.
pub fn resolve(source: &SecretSource, word: &str) -> Result<Option<String>, String> {
    match source {
        SecretSource::None => Ok(None),
        SecretSource::Inline(secret) => Ok(Some(secret.clone())),
        SecretSource::Environment(name) => match std::env::var(name) {
            Ok(secret) if !secret.trim().is_empty() => Ok(Some(secret.trim().to_string())),
            _ => Err(format!(
                "{word}_env {name} is not set in the agent's environment (for the service: an Environment= or EnvironmentFile= line)"
            )),
        },
        SecretSource::File(path) => {
            warn_if_readable_by_others(path, word);
            match std::fs::read_to_string(path) {
                Ok(secret) if !secret.trim().is_empty() => Ok(Some(secret.trim().to_string())),
                Ok(_) => Err(format!("{word}_file {} is empty", path.display())),
                Err(error) => Err(format!(
                    "cannot read {word}_file {}: {error}",
                    path.display()
                )),
            }
        }
    }
}

fn warn_if_readable_by_others(path: &Path, word: &str) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(metadata) = std::fs::metadata(path) {
            if metadata.permissions().mode() & 0o004 != 0 {
                tracing::warn!(
                    "{word}_file {} is readable by every user: chmod 600 it (or 640 with the service's group)",
                    path.display()
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, word);
}
