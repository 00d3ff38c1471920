//! `jwt-tokens-service`: answers nginx's `auth_request` with a fresh HS256 token per execution
//! client, as flashbots' Go tool does, on the same event loop and HTTP code as `sync-proxy`.

use std::process::ExitCode;
use std::time::Duration;

use sync_proxy::config::{self, TokensCommand};
use sync_proxy::event_loop::Proxy;
use sync_proxy::signals::SignalFlag;
use sync_proxy::{http, logging};

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let cfg = match config::parse_tokens_service(args, &|name| std::env::var(name).ok()) {
        Ok(TokensCommand::Run(cfg)) => cfg,
        Ok(TokensCommand::Help) => {
            print!("{}", config::tokens_service_help_text());
            return ExitCode::SUCCESS;
        }
        Ok(TokensCommand::Version) => {
            println!("jwt-tokens-service {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("jwt-tokens-service: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some((name, _)) = cfg.entries.iter().find(|(name, _)| !http::is_token(name)) {
        eprintln!("jwt-tokens-service: config name {name:?} cannot be part of a header name (use letters, digits, '-', '_')");
        return ExitCode::from(2);
    }
    logging::init(cfg.log_level, cfg.log_json);
    let stop = match SignalFlag::install() {
        Ok(stop) => stop,
        Err(e) => {
            log::error!("cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut service = match Proxy::bind_tokens_service(&cfg) {
        Ok(service) => service,
        Err(e) => {
            log::error!("cannot listen on {}: {e}", cfg.listen_text);
            return ExitCode::FAILURE;
        }
    };
    match service.local_addr() {
        Ok(addr) => log::info!("jwt-tokens-service listening on {addr} with {} entries", cfg.entries.len()),
        Err(e) => log::warn!("listening, address unknown: {e}"),
    }
    match service.run(&stop, Duration::ZERO) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("event loop failed: {e}");
            ExitCode::FAILURE
        }
    }
}
