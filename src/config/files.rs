//! The files the command line names: `--jwt-secret`, `--builder-jwt-secrets` (matched to the
//! builders), `--builder-ca`, `--builders-file` and the tokens service's `--config`. Each is read
//! with a size cap, and an error names the file and the flag but never repeats its content.

use std::fmt::Display;
use std::path::Path;

use super::endpoints::{split_endpoint, Endpoint, NO_TLS};
use super::ConfigError;
use crate::jwt::{self, Secret};
use crate::tls;

/// Secret and config files are small; reading at most this much means a wrong path such as
/// `/dev/zero` fails with a clear error instead of filling memory.
const MAX_FILE_BYTES: u64 = 1 << 20;

pub(super) fn show_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

pub(super) fn read_file(path: &Path, flag: &str) -> Result<String, ConfigError> {
    use std::io::Read;
    let cannot = |e: &dyn Display| err!("cannot read {flag} file {}: {e}", show_path(path));
    let file = std::fs::File::open(path).map_err(|e| cannot(&e))?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text).map_err(|e| cannot(&e))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(cannot(&format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    Ok(text)
}

/// Reads a file and parses its text; an error names the flag and the file, and only says why
/// `parse` refused it (never the content).
pub(super) fn read_parsed<T, E: Display>(
    path: &Path,
    flag: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, ConfigError> {
    parse(&read_file(path, flag)?).map_err(|why| err!("invalid {flag} file {}: {why}", show_path(path)))
}

/// `--builder-ca`: the certificates of a PEM file, read and checked at start-up.
pub(super) fn read_builder_ca(path: &Path) -> Result<Vec<Vec<u8>>, ConfigError> {
    if !tls::ENABLED {
        return Err(err!("--builder-ca: {NO_TLS}"));
    }
    read_parsed(path, "--builder-ca", |text| tls::parse_pem_certificates(text.as_bytes()))
}

/// Gives each builder the secret whose key is its name as written or its URL (compared after
/// normalizing the key, so `http://localhost:8551` finds `localhost:8551`). A key that matches
/// no builder is an error: it is surely a typo that would otherwise send the wrong secret.
pub(super) fn assign_builder_secrets(
    builders: &[Endpoint],
    path: &Path,
) -> Result<Vec<Option<Secret>>, ConfigError> {
    const FLAG: &str = "--builder-jwt-secrets";
    let mut slots: Vec<Option<(String, Secret)>> = vec![None; builders.len()];
    for (key, secret) in read_parsed(path, FLAG, jwt::parse_secret_map)? {
        let key_url = split_endpoint(&key).ok().map(|(endpoint, ..)| endpoint.url);
        let mut matched = false;
        for (builder, slot) in builders.iter().zip(slots.iter_mut()) {
            if builder.name != key && key_url.as_deref() != Some(builder.url.as_str()) {
                continue;
            }
            matched = true;
            if let Some((earlier, _)) = slot {
                let builder = &builder.name;
                let path = show_path(path);
                return Err(err!(
                    "{FLAG} file {path}: builder {builder:?} is matched by both {earlier:?} and {key:?}"
                ));
            }
            *slot = Some((key.clone(), secret.clone()));
        }
        if !matched {
            return Err(err!(
                "{FLAG} file {}: key {key:?} matches no builder in --builders",
                show_path(path)
            ));
        }
    }
    Ok(slots.into_iter().map(|slot| slot.map(|(_, secret)| secret)).collect())
}
