//! The `sync-proxy` binary: command line → `Config`, logging, the event loop, exit code.
//! It knows no sockets, HTTP, JSON or JWT itself.

use std::process::ExitCode;
use std::time::Duration;

use sync_proxy::answer_policy::AnswerPolicy;
use sync_proxy::config::{self, Command, Config};
use sync_proxy::event_loop::Proxy;
use sync_proxy::logging;
use sync_proxy::payload_choice::PayloadChoice;
use sync_proxy::signals::SignalFlag;

/// How long queued calls may take to go out after SIGTERM/SIGINT.
const DRAIN: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let cfg = match config::parse(args, &|name| std::env::var(name).ok()) {
        Ok(Command::Run(cfg)) => cfg,
        Ok(Command::Help) => {
            print!("{}", config::help_text());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("sync-proxy {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("sync-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(cfg.log_level, cfg.log_json);
    match run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cfg: Config) -> Result<(), String> {
    let stop = SignalFlag::install().map_err(|e| format!("cannot handle signals: {e}"))?;
    let summary = summary(&cfg);
    let insecure = cfg.jwt_secret.is_none() && !cfg.listen.ip().is_loopback();
    let listen_text = cfg.listen_text.clone();
    let mut proxy = Proxy::bind(cfg).map_err(|e| format!("cannot listen on {listen_text}: {e}"))?;
    let addr = proxy.local_addr().map_err(|e| e.to_string())?;
    log::info!("sync-proxy {} listening on {addr}", env!("CARGO_PKG_VERSION"));
    log::info!("{summary}");
    if insecure {
        log::warn!(
            "no --jwt-secret and {addr} is not a loopback address: anyone who can reach it can drive the execution clients"
        );
    }
    proxy.run(&stop, DRAIN).map_err(|e| format!("event loop failed: {e}"))?;
    log::info!("stopped");
    Ok(())
}

/// One start-up line an operator can check at a glance.
fn summary(cfg: &Config) -> String {
    let names =
        |list: &[config::Endpoint]| list.iter().map(|e| e.name.as_str()).collect::<Vec<_>>().join(", ");
    let own_secrets = cfg.builder_jwt_secrets.iter().filter(|s| s.is_some()).count();
    let checked = cfg.jwt_secret.is_some() || !cfg.beacon_jwt_secrets.is_empty();
    let auth = match (checked.then_some(()), own_secrets) {
        (None, 0) => "no inbound JWT check; beacon node tokens passed through".to_string(),
        (Some(_), 0) => "inbound JWT checked; beacon node tokens passed through".to_string(),
        (None, n) => format!("no inbound JWT check; own tokens minted for {n} execution client(s)"),
        (Some(_), n) => format!("inbound JWT checked; own tokens minted for {n} execution client(s)"),
    };
    format!(
        "execution clients (first is primary): {}; peer proxies: [{}]; {}; {}{}",
        names(&cfg.builders),
        names(&cfg.proxies),
        auth,
        if cfg.mirror_mode {
            "mirror mode (acknowledge at once)".to_string()
        } else if cfg.answer_policy == AnswerPolicy::Safe {
            format!("--answer-policy safe (wait {} ms)", cfg.answer_wait.as_millis())
        } else {
            "answering with the primary's answer".to_string()
        },
        if cfg.payload_choice == PayloadChoice::BestValue { "; --payload-choice best-value" } else { "" }
    )
}
