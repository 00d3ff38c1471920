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
fn read_parsed<T, E: Display>(
    path: &Path,
    flag: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, ConfigError> {
    parse(&read_file(path, flag)?).map_err(|why| err!("invalid {flag} file {}: {why}", show_path(path)))
}

/// A file with one hex secret (`--jwt-secret`).
pub(super) fn read_secret_file(path: &Path, flag: &str) -> Result<Secret, ConfigError> {
    read_parsed(path, flag, Secret::from_hex)
}

/// A JSON object of name to hex secret (`--builder-jwt-secrets`, the tokens service's `--config`).
pub(super) fn read_secret_map(path: &Path, flag: &str) -> Result<Vec<(String, Secret)>, ConfigError> {
    read_parsed(path, flag, jwt::parse_secret_map)
}

/// `--beacon-jwt-secrets`: a JSON object of beacon node identity to hex secret.
pub(super) fn read_beacon_secrets(path: &Path) -> Result<Vec<(String, Secret)>, ConfigError> {
    read_parsed(path, "--beacon-jwt-secrets", crate::beacons::parse_beacon_secrets)
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
    for (key, secret) in read_secret_map(path, FLAG)? {
        let key_url = split_endpoint(&key).ok().map(|parts| parts.url);
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

#[cfg(test)]
mod tests {
    use crate::config::test_util::*;

    #[test]
    fn secret_flags_in_every_spelling() {
        let secret_file = TempFile::new(SECRET_HEX);
        let map_file = secret_map(&[(BUILDER, OTHER_SECRET_HEX)]);
        for (flag, file) in [("jwt-secret", &secret_file), ("builder-jwt-secrets", &map_file)] {
            for spelling in spellings(flag, file.arg()) {
                let args = joined(&["-builders", BUILDER], &spelling);
                let config = run(&args);
                if flag == "jwt-secret" {
                    assert_eq!(config.jwt_secret, Some(secret(SECRET_HEX)), "{args:?}");
                } else {
                    assert_eq!(config.builder_jwt_secrets, vec![Some(secret(OTHER_SECRET_HEX))], "{args:?}");
                }
            }
        }
        let file = TempFile::new(&format!("  0x{SECRET_HEX}\n"));
        let config = run(&with_builder(&["-jwt-secret", file.arg()]));
        assert_eq!(config.jwt_secret, Some(secret(SECRET_HEX)), "a 0x prefix and white space are fine");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn builder_ca_reads_every_certificate_of_a_pem_file() {
        let pem = |cn: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.distinguished_name.push(rcgen::DnType::CommonName, cn);
            params.self_signed(&key).unwrap().pem()
        };
        let file = TempFile::new(&format!("{}\n{}", pem("one"), pem("two")));
        let config = run(&["--builders", "https://127.0.0.1:1", "--builder-ca", file.arg()]);
        assert_eq!(config.builder_ca.len(), 2);
        let empty = TempFile::new("# nothing here\n");
        let message = error(&["--builders", "https://127.0.0.1:1", "--builder-ca", empty.arg()]);
        assert_mentions(&message, &["invalid --builder-ca file", "no PEM certificate"]);
    }

    #[test]
    fn bad_secret_files_are_named_without_their_content() {
        let missing =
            std::env::temp_dir().join(format!("sync-proxy-config-test-missing-{}", std::process::id()));
        let missing = missing.to_str().unwrap();
        assert_errors(&[
            (&["--jwt-secret", missing], &["cannot read", "--jwt-secret", missing]),
            (&["--builder-jwt-secrets", missing], &["cannot read", "--builder-jwt-secrets", missing]),
        ]);
        // Content that is almost a secret: it must never be echoed back.
        let almost = &SECRET_HEX[..60];
        let rows = [
            ("-jwt-secret", TempFile::new(almost), almost),
            ("-builder-jwt-secrets", secret_map(&[(BUILDER, almost)]), almost),
            ("-builder-jwt-secrets", TempFile::new(SECRET_HEX), SECRET_HEX),
        ];
        for (flag, file, content) in &rows {
            let message = error(&with_builder(&[flag, file.arg()]));
            assert_mentions(&message, &[&format!("invalid -{flag} file"), file.arg()]);
            assert!(!message.contains(content), "{message}");
        }
    }

    #[test]
    fn builder_secrets_match_by_name_or_url() {
        let builders = "127.0.0.1:1,http://127.0.0.2:2/engine,127.0.0.3:3";
        let secrets = |pairs: &[(&str, &str)]| {
            let map = secret_map(pairs);
            run(&["-builders", builders, "-builder-jwt-secrets", map.arg()]).builder_jwt_secrets
        };
        let (one, other) = (Some(secret(SECRET_HEX)), Some(secret(OTHER_SECRET_HEX)));
        let by_name = secrets(&[("127.0.0.1:1", SECRET_HEX), ("127.0.0.2:2/engine", OTHER_SECRET_HEX)]);
        assert_eq!(by_name, vec![one.clone(), other, None]);
        // A key written as a URL finds a builder written as host:port, and vice versa.
        assert_eq!(secrets(&[("http://127.0.0.3:3/", SECRET_HEX)]), vec![None, None, one]);
    }

    #[test]
    fn builder_secret_keys_must_match_exactly_one_builder() {
        let typo = secret_map(&[("127.0.0.1:1", SECRET_HEX), ("typo:8551", OTHER_SECRET_HEX)]);
        let proxy = secret_map(&[("127.0.0.9:9", SECRET_HEX)]);
        let twice = secret_map(&[("127.0.0.1:1", SECRET_HEX), ("http://127.0.0.1:1", OTHER_SECRET_HEX)]);
        let rows: &[(&[&str], &TempFile, &[&str])] = &[
            (&[], &typo, &["\"typo:8551\"", "matches no builder", typo.arg()]),
            // Proxies are not builders.
            (&["-proxies", "127.0.0.9:9"], &proxy, &["\"127.0.0.9:9\"", "matches no builder"]),
            (&[], &twice, &["matched by both", "127.0.0.1:1"]),
        ];
        for (more, map, needles) in rows {
            let message =
                error(&[&["-builders", "127.0.0.1:1", "-builder-jwt-secrets", map.arg()], *more].concat());
            assert_mentions(&message, needles);
            assert!(!message.contains(OTHER_SECRET_HEX));
        }
    }

    #[test]
    fn reload_reads_the_secret_files_again() {
        let jwt = TempFile::new(SECRET_HEX);
        let config = run(&with_builder(&["--jwt-secret", jwt.arg()]));
        assert_eq!(config.jwt_secret, Some(secret(SECRET_HEX)));
        std::fs::write(&jwt.path, OTHER_SECRET_HEX).unwrap();
        let reloaded = read_reloadable(&config.reload).unwrap();
        assert_eq!(
            (reloaded.jwt_secret, reloaded.builders),
            (Some(secret(OTHER_SECRET_HEX)), config.builders)
        );
        std::fs::write(&jwt.path, "not hex").unwrap();
        assert_mentions(&read_reloadable(&config.reload).unwrap_err().0, &["--jwt-secret"]);
    }

    #[test]
    fn debug_output_does_not_leak_secrets() {
        let jwt = TempFile::new(SECRET_HEX);
        let map = secret_map(&[(BUILDER, OTHER_SECRET_HEX)]);
        let config = run(&with_builder(&["-jwt-secret", jwt.arg(), "-builder-jwt-secrets", map.arg()]));
        let debug = format!("{config:?} {:?}", Command::Run(config.clone()));
        for leak in [&SECRET_HEX[..16], &OTHER_SECRET_HEX[..16], "[1, 35, 69", "[254, 220"] {
            assert!(!debug.contains(leak), "Debug leaks {leak:?}: {debug}");
        }
    }
}
