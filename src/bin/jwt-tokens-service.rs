//! `jwt-tokens-service`: answers nginx's `auth_request` with a fresh HS256 token per execution
//! client, as flashbots' Go tool does: a small program of its own (`tokens_service`) on the
//! same shell, connection state machine and HTTP code as `sync-proxy`.

use std::process::ExitCode;

use sync_proxy::config::{self, TokensCommand, TokensServiceConfig};
use sync_proxy::signals::SignalFlag;
use sync_proxy::tokens_service::TokensService;
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
    match run(&cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cfg: &TokensServiceConfig) -> Result<(), String> {
    let stop = SignalFlag::install().map_err(|e| format!("cannot handle signals: {e}"))?;
    let mut service =
        TokensService::bind(cfg).map_err(|e| format!("cannot listen on {}: {e}", cfg.listen_text))?;
    match service.local_addr() {
        Ok(addr) => log::info!("jwt-tokens-service listening on {addr} with {} entries", cfg.entries.len()),
        Err(e) => log::warn!("listening, address unknown: {e}"),
    }
    service.run(&stop).map_err(|e| format!("event loop failed: {e}"))
}
