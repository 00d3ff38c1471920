//! The event loop's side of a configuration that changes while it runs: execution clients'
//! names looked up again (their answers applied to the addresses in use) and SIGHUP reloads
//! (new secrets; the new builder list applied with the plan from `reload`).
//!
//! The slow parts (name lookups, reading files) run on the helper thread in `resolve`; this
//! file only sends it tasks and applies what comes back, with `now` passed in.

use std::time::Instant;

use super::Proxy;
use crate::config::{Config, Endpoint, Reloaded};
use crate::http::Limits;
use crate::jwt::{Secret, TokenCache};
use crate::metrics::ElMetrics;
use crate::reload::{self, Origin};
use crate::resolve::{self, Done, Refresh, Task, Verdict};
use crate::tls;
use crate::upstream::{Failure, Upstream};

/// A builder's upstream with its tokens: its own secret's, else (with `--jwt-secret`) one for
/// calls replayed from its backlog (see `Upstream::replay_token`).
pub(super) fn builder_upstream(
    cfg: &Config,
    endpoint: Endpoint,
    own: Option<Secret>,
    tls: Option<&tls::Settings>,
    now: Instant,
) -> Upstream {
    let https = endpoint.is_https();
    let mut upstream = Upstream::new(endpoint, false, None, cfg.backlog_requests, cfg.backlog_bytes);
    upstream.tls = tls.filter(|_| https).cloned();
    upstream.answer_limits = answer_limits(cfg);
    set_tokens(&mut upstream, cfg, own);
    upstream.refresh = refresh_for(&upstream.endpoint, now);
    upstream
}

/// The caps on an execution client's answers: like requests, so an oversized or endless answer
/// fails that client and the call falls back to the next one.
pub(super) fn answer_limits(cfg: &Config) -> Limits {
    Limits { max_head: super::MAX_HEAD, max_body: cfg.max_body_bytes }
}

/// The lookup schedule of an endpoint whose host is a name (None for an IP literal).
pub(super) fn refresh_for(endpoint: &Endpoint, now: Instant) -> Option<Refresh> {
    resolve::lookup_target(&endpoint.url).map(|(host, port)| Refresh::new(host, port, now))
}

fn set_tokens(upstream: &mut Upstream, cfg: &Config, own: Option<Secret>) {
    let client_id = cfg.jwt_client_id.clone();
    upstream.token = own.map(|secret| TokenCache::new(secret, client_id.clone()));
    upstream.replay_token = match upstream.token {
        Some(_) => None,
        None => cfg.jwt_secret.clone().map(|secret| TokenCache::new(secret, client_id)),
    };
}

fn show(addrs: &[std::net::SocketAddr]) -> String {
    addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

impl Proxy {
    /// Sends the lookups that are due to the helper thread.
    /// Sends the lookups that are due to the helper thread. ELs that share a name share one
    /// lookup: its answer goes to every one of them that waits (see `on_lookup`).
    pub(super) fn ask_lookups(&mut self, now: Instant) {
        let Some(worker) = self.worker.as_ref() else { return };
        for up in 0..self.ups.len() {
            let Some(refresh) = self.ups[up].refresh.as_ref() else { continue };
            if !refresh.due_at().is_some_and(|at| at <= now) {
                continue;
            }
            let (host, port) = (refresh.host.clone(), refresh.port);
            let asked = self.ups.iter().enumerate().any(|(other, u)| {
                other != up
                    && u.refresh
                        .as_ref()
                        .is_some_and(|r| r.host == host && r.port == port && r.due_at().is_none())
            });
            let u = &mut self.ups[up];
            let Some(refresh) = u.refresh.as_mut() else { continue };
            refresh.take_due(now);
            if !asked && !worker.ask(Task::Lookup { host, port }) {
                log::debug!("{}: lookup queue full; asking again later", u.endpoint.name);
                refresh.not_sent();
            }
        }
    }

    /// The earliest moment a lookup is due.
    pub(super) fn next_lookup(&self) -> Option<Instant> {
        self.ups.iter().filter_map(|u| u.refresh.as_ref().and_then(Refresh::due_at)).min()
    }

    /// Connecting to client `up` failed: its name may point somewhere else now.
    pub(super) fn unreachable(&mut self, up: usize) {
        if let Some(refresh) = self.ups[up].refresh.as_mut() {
            refresh.connect_failed();
        }
    }

    /// SIGHUP: the files are read again on the helper thread.
    pub(super) fn request_reload(&mut self) {
        let Some(worker) = self.worker.as_ref() else {
            log::info!("SIGHUP: nothing to reload here");
            return;
        };
        if self.reload_in_flight {
            self.reload_again = true;
            return;
        }
        if worker.ask(Task::Reload(Box::new(self.cfg.reload.clone()))) {
            log::info!("SIGHUP: reading the configuration files again");
            self.reload_in_flight = true;
        } else {
            log::warn!("SIGHUP: cannot reload now (the helper thread is busy or gone); send it again");
        }
    }

    /// The helper thread finished something (its waker fired).
    pub(super) fn on_worker_done(&mut self, now: Instant) {
        let Some(worker) = self.worker.as_ref() else { return };
        for done in worker.finished() {
            match done {
                Done::Lookup { host, port, result } => self.on_lookup(&host, port, result, now),
                Done::Reload(result) => {
                    self.reload_in_flight = false;
                    match result {
                        Ok(reloaded) => match self.tls_for(&reloaded.builders) {
                            Ok(()) => self.apply_reload(*reloaded, now),
                            Err(why) => log::warn!("reload failed, keeping the running configuration: {why}"),
                        },
                        Err(why) => log::warn!("reload failed, keeping the running configuration: {why}"),
                    }
                    if std::mem::take(&mut self.reload_again) {
                        self.request_reload();
                    }
                }
            }
        }
    }

    fn on_lookup(
        &mut self,
        host: &str,
        port: u16,
        result: Result<Vec<std::net::SocketAddr>, String>,
        now: Instant,
    ) {
        for up in 0..self.ups.len() {
            let u = &mut self.ups[up];
            let Some(refresh) = u.refresh.as_mut() else { continue };
            if refresh.host != host || refresh.port != port || refresh.due_at().is_some() {
                continue;
            }
            let verdict = refresh.answered(&u.endpoint.addrs, result.clone(), now);
            let name = u.endpoint.name.clone();
            let new = match verdict {
                Verdict::Same => {
                    log::debug!("{name}: {host} still resolves to {}", show(&u.endpoint.addrs));
                    None
                }
                Verdict::Changed(addrs) => Some(addrs),
                Verdict::Failed { first } => {
                    if first {
                        log::warn!(
                            "{name}: cannot look up {host} again ({}); keeping {}",
                            result.as_ref().err().map_or("", String::as_str),
                            show(&u.endpoint.addrs)
                        );
                    }
                    None
                }
                Verdict::Recovered(addrs) => {
                    log::info!("{name}: {host} can be looked up again");
                    addrs
                }
            };
            if let Some(addrs) = new {
                log::info!(
                    "{name}: {host} now resolves to {} (was {}); new connections go there",
                    show(&addrs),
                    show(&u.endpoint.addrs)
                );
                u.set_addrs(addrs, now);
                self.pump(up, now);
            }
        }
    }

    /// Applies a reload: new secrets at once; ELs that stay keep their connections and ordered
    /// backlog (the first of the new list is the primary), new ones start empty, removed ones
    /// are dropped with their queued calls (those fail for their beacon nodes, which are
    /// answered by the other ELs). Per-EL metrics follow their EL; a removed EL's disappear.
    /// Makes the TLS settings when a reload brings the first `https://` execution client.
    fn tls_for(&mut self, builders: &[Endpoint]) -> Result<(), String> {
        if self.tls.is_none() && builders.iter().any(Endpoint::is_https) {
            self.tls = Some(tls::start(&self.cfg.builder_ca)?);
        }
        Ok(())
    }

    fn apply_reload(&mut self, new: Reloaded, now: Instant) {
        let old_urls: Vec<String> =
            self.ups[..self.builders].iter().map(|u| u.endpoint.url.clone()).collect();
        let old_refs: Vec<&str> = old_urls.iter().map(String::as_str).collect();
        let new_urls: Vec<&str> = new.builders.iter().map(|e| e.url.as_str()).collect();
        let plan = reload::plan(&old_refs, &new_urls);
        let removed: Vec<String> = plan.removed.iter().map(|&i| self.ups[i].endpoint.name.clone()).collect();
        let rotated = self.cfg.jwt_secret != new.jwt_secret
            || self.cfg.builder_jwt_secrets != new.builder_jwt_secrets
            || self.cfg.beacon_jwt_secrets != new.beacon_jwt_secrets;
        self.cfg.jwt_secret = new.jwt_secret;
        self.cfg.beacon_jwt_secrets = new.beacon_jwt_secrets;

        // Removed ELs give up their calls while every index is still the old one. A non-engine
        // call failing over may land on another removed EL; the next pass takes it from there
        // (each failover moves one place down the list, so this ends).
        let mut dropped = 0usize;
        loop {
            let mut jobs = Vec::new();
            for &i in &plan.removed {
                jobs.extend(self.ups[i].take_all_jobs().into_iter().map(|job| (i, job)));
            }
            if jobs.is_empty() {
                break;
            }
            for (i, job) in jobs {
                dropped += 1;
                self.job_failed(i, job, Failure::Dropped, now);
            }
        }

        let old_builders = self.builders;
        let mut old: Vec<Option<Upstream>> = self.ups.drain(..).map(Some).collect();
        let mut old_metrics = std::mem::take(&mut self.metrics.els);
        old_metrics.resize_with(old.len(), ElMetrics::default);
        let mut els = Vec::new();
        for (i, (origin, endpoint)) in plan.order.iter().zip(new.builders.iter().cloned()).enumerate() {
            let own = new.builder_jwt_secrets.get(i).cloned().flatten();
            let kept = match origin {
                Origin::Kept(o) => old[*o].take().map(|u| (*o, u)),
                Origin::Added => None,
            };
            match kept {
                Some((o, mut u)) => {
                    let addrs = endpoint.addrs.clone();
                    let current = std::mem::replace(&mut u.endpoint, endpoint);
                    u.endpoint.addrs = current.addrs;
                    if !resolve::same_set(&addrs, &u.endpoint.addrs) {
                        log::info!(
                            "{}: now resolves to {} (was {}); new connections go there",
                            u.endpoint.name,
                            show(&addrs),
                            show(&u.endpoint.addrs)
                        );
                        u.set_addrs(addrs, now);
                    }
                    set_tokens(&mut u, &self.cfg, own);
                    els.push(std::mem::take(&mut old_metrics[o]));
                    self.ups.push(u);
                }
                None => {
                    self.ups.push(builder_upstream(&self.cfg, endpoint, own, self.tls.as_ref(), now));
                    els.push(ElMetrics::default());
                }
            }
        }
        let builders = self.ups.len();
        for o in old_builders..old.len() {
            if let Some(peer) = old[o].take() {
                self.ups.push(peer);
                els.push(std::mem::take(&mut old_metrics[o]));
            }
        }
        self.metrics.els = els;
        let origins: Vec<Option<usize>> = plan
            .order
            .iter()
            .map(|origin| match origin {
                Origin::Kept(o) => Some(*o),
                Origin::Added => None,
            })
            .collect();
        self.metrics.sync.rearrange(&origins);
        self.builders = builders;
        // The sockets follow their clients; those of removed clients are closed.
        let mut all_origins = origins;
        all_origins.extend((old_builders..old.len()).map(Some));
        let unregistered = self.el_sockets.rearrange(self.poll.registry(), &all_origins, Self::up_token);
        for (i, slot) in unregistered {
            log::warn!("{}: cannot register a connection again", self.ups[i].endpoint.name);
            if let Some(conn) = self.ups[i].conns[slot].as_mut() {
                conn.dead = true;
            }
        }
        self.cfg.builders = new.builders;
        self.cfg.builder_jwt_secrets = new.builder_jwt_secrets;

        let names: Vec<&str> = self.ups[..self.builders].iter().map(|u| u.endpoint.name.as_str()).collect();
        log::info!(
            "reloaded: execution clients (first is primary): {}; {} kept, {} added, removed: [{}]; secrets {}",
            names.join(", "),
            plan.order.len() - plan.added(),
            plan.added(),
            removed.join(", "),
            if rotated { "changed" } else { "unchanged" }
        );
        if dropped > 0 {
            log::warn!(
                "reload: dropped {dropped} calls queued or in flight for removed execution clients [{}]",
                removed.join(", ")
            );
        }
        self.pump_all(now);
    }
}
