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
        let map_file = TempFile::new(&format!("{{\"{BUILDER}\": \"{OTHER_SECRET_HEX}\"}}"));
        for (flag, file) in [("jwt-secret", &secret_file), ("builder-jwt-secrets", &map_file)] {
            for spelling in spellings(flag, file.arg()) {
                let mut args = vec!["-builders".to_owned(), BUILDER.to_owned()];
                args.extend(spelling);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let config = run(&args);
                if flag == "jwt-secret" {
                    assert_eq!(config.jwt_secret, Some(secret(SECRET_HEX)), "{args:?}");
                } else {
                    assert_eq!(config.builder_jwt_secrets, vec![Some(secret(OTHER_SECRET_HEX))], "{args:?}");
                }
            }
        }
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
    fn jwt_secret_file_accepts_prefix_and_whitespace() {
        let file = TempFile::new(&format!("  0x{SECRET_HEX}\n"));
        let config = run(&["-builders", BUILDER, "-jwt-secret", file.arg()]);
        assert_eq!(config.jwt_secret, Some(secret(SECRET_HEX)));
    }

    #[test]
    fn unreadable_secret_files_are_named() {
        let missing =
            std::env::temp_dir().join(format!("sync-proxy-config-test-missing-{}", std::process::id()));
        let missing = missing.to_str().unwrap();
        for flag in ["--jwt-secret", "--builder-jwt-secrets"] {
            let message = error(&["-builders", BUILDER, flag, missing]);
            assert_mentions(&message, &["cannot read", flag, missing]);
        }
    }

    #[test]
    fn invalid_secret_files_are_named_without_their_content() {
        // Content that is almost a secret: it must never be echoed back.
        let almost = &SECRET_HEX[..60];
        let jwt = TempFile::new(almost);
        let message = error(&["-builders", BUILDER, "-jwt-secret", jwt.arg()]);
        assert_mentions(&message, &["invalid --jwt-secret file", jwt.arg()]);
        assert!(!message.contains(almost), "{message}");

        let map = TempFile::new(&format!("{{\"{BUILDER}\": \"{almost}\"}}"));
        let message = error(&["-builders", BUILDER, "-builder-jwt-secrets", map.arg()]);
        assert_mentions(&message, &["invalid --builder-jwt-secrets file", map.arg()]);
        assert!(!message.contains(almost), "{message}");

        let not_json = TempFile::new(SECRET_HEX);
        let message = error(&["-builders", BUILDER, "-builder-jwt-secrets", not_json.arg()]);
        assert_mentions(&message, &["invalid --builder-jwt-secrets file", not_json.arg()]);
        assert!(!message.contains(SECRET_HEX), "{message}");
    }

    #[test]
    fn builder_secrets_match_by_name_or_url() {
        let builders = "127.0.0.1:1,http://127.0.0.2:2/engine,127.0.0.3:3";
        let map = TempFile::new(&format!(
            "{{\"127.0.0.1:1\": \"{SECRET_HEX}\", \"127.0.0.2:2/engine\": \"{OTHER_SECRET_HEX}\"}}"
        ));
        let config = run(&["-builders", builders, "-builder-jwt-secrets", map.arg()]);
        assert_eq!(
            config.builder_jwt_secrets,
            vec![Some(secret(SECRET_HEX)), Some(secret(OTHER_SECRET_HEX)), None]
        );

        // A key written as a URL finds a builder written as host:port, and vice versa.
        let map = TempFile::new(&format!("{{\"http://127.0.0.3:3/\": \"{SECRET_HEX}\"}}"));
        let config = run(&["-builders", builders, "-builder-jwt-secrets", map.arg()]);
        assert_eq!(config.builder_jwt_secrets, vec![None, None, Some(secret(SECRET_HEX))]);
    }

    #[test]
    fn builder_secret_key_matching_no_builder_is_named() {
        let map = TempFile::new(&format!(
            "{{\"127.0.0.1:1\": \"{SECRET_HEX}\", \"typo:8551\": \"{OTHER_SECRET_HEX}\"}}"
        ));
        let message = error(&["-builders", "127.0.0.1:1", "-builder-jwt-secrets", map.arg()]);
        assert_mentions(&message, &["\"typo:8551\"", "matches no builder", map.arg()]);
        assert!(!message.contains(OTHER_SECRET_HEX));

        // Proxies are not builders.
        let map = TempFile::new(&format!("{{\"127.0.0.9:9\": \"{SECRET_HEX}\"}}"));
        let message = error(&[
            "-builders",
            "127.0.0.1:1",
            "-proxies",
            "127.0.0.9:9",
            "-builder-jwt-secrets",
            map.arg(),
        ]);
        assert_mentions(&message, &["\"127.0.0.9:9\"", "matches no builder"]);
    }

    #[test]
    fn builder_matched_by_two_keys_is_an_error() {
        let map = TempFile::new(&format!(
            "{{\"127.0.0.1:1\": \"{SECRET_HEX}\", \"http://127.0.0.1:1\": \"{OTHER_SECRET_HEX}\"}}"
        ));
        let message = error(&["-builders", "127.0.0.1:1", "-builder-jwt-secrets", map.arg()]);
        assert_mentions(&message, &["matched by both", "127.0.0.1:1"]);
    }

    #[test]
    fn debug_output_does_not_leak_secrets() {
        let jwt = TempFile::new(SECRET_HEX);
        let map = TempFile::new(&format!("{{\"{BUILDER}\": \"{OTHER_SECRET_HEX}\"}}"));
        let config =
            run(&["-builders", BUILDER, "-jwt-secret", jwt.arg(), "-builder-jwt-secrets", map.arg()]);
        let debug = format!("{config:?} {:?}", Command::Run(config.clone()));
        for leak in [&SECRET_HEX[..16], &OTHER_SECRET_HEX[..16], "[1, 35, 69", "[254, 220"] {
            assert!(!debug.contains(leak), "Debug leaks {leak:?}: {debug}");
        }
    }

    #[test]
    fn reload_reads_the_secret_files_again() {
        let jwt = TempFile::new(SECRET_HEX);
        let config = run(&["--builders", BUILDER, "--jwt-secret", jwt.arg()]);
        assert_eq!(config.jwt_secret, Some(secret(SECRET_HEX)));
        std::fs::write(&jwt.path, OTHER_SECRET_HEX).unwrap();
        let reloaded = read_reloadable(&config.reload).unwrap();
        assert_eq!(reloaded.jwt_secret, Some(secret(OTHER_SECRET_HEX)));
        assert_eq!(reloaded.builders, config.builders);
        std::fs::write(&jwt.path, "not hex").unwrap();
        let message = read_reloadable(&config.reload).unwrap_err().0;
        assert_mentions(&message, &["--jwt-secret"]);
    }
}
