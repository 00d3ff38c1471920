//! Both command-line parsers on argument lists that resolve only loopback names and read only
//! fixture files (see `sync_proxy_fuzz::args`): no panic, and every address is local.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use sync_proxy::config::{self, Command, TokensCommand};
use sync_proxy_fuzz::args::{args, hermetic};

fn local(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback() || addr.ip().is_unspecified()
}

fuzz_target!(|data: &[u8]| {
    let args = args(data);
    if !hermetic(&args) {
        return;
    }
    if let Ok(Command::Run(cfg)) = config::parse(args.clone(), &|_| None) {
        let endpoints = cfg.builders.iter().chain(&cfg.proxies);
        assert!(endpoints.flat_map(|e| &e.addrs).all(local), "{cfg:?}");
        assert!(local(&cfg.listen) && cfg.metrics_addr.as_ref().is_none_or(local), "{cfg:?}");
        assert!(!cfg.builders.is_empty() && cfg.builder_jwt_secrets.len() == cfg.builders.len());
    }
    if let Ok(TokensCommand::Run(tokens)) = config::parse_tokens_service(args, &|_| None) {
        assert!(local(&tokens.listen) && !tokens.entries.is_empty(), "{tokens:?}");
    }
});
