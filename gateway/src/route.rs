//! Picking the endpoint of a request.
//!
//! First the track: when both the stable and the canary track have a ready
//! endpoint, a per-model counter sends exactly `canary_percent` of every 100
//! consecutive requests to the canary (evenly spread, not random), so the
//! split is exact from the first hundred requests on. Then, within the track,
//! either the ready endpoint with the fewest requests in flight (ties broken
//! round robin), or, in prefix-hash mode, the endpoint the prompt's first
//! characters hash to on a consistent-hash ring, skipping endpoints that
//! already carry more than `(1 + ε)` times the average load so that a hot
//! prefix cannot pile onto one replica (consistent hashing with bounded
//! loads). Same prefixes reach the same replica, whose prompt cache then hits.
//!
//! Counts live here, not in the snapshot, keyed by endpoint address and model
//! id, so that they survive snapshot swaps. An [`EndpointGuard`] holds one
//! request in flight on its endpoint until it is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::state::{Endpoint, Model, Track};

/// How endpoints are picked within a track.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RoutingMode {
    /// The ready endpoint with the fewest requests in flight.
    LeastInFlight,
    /// Consistent hashing of the prompt's first `prefix_chars` characters,
    /// with bounded loads: an endpoint is skipped when taking the request
    /// would put it above `(1 + load_factor)` times the average in flight.
    PrefixHash {
        /// How many characters of the prompt are hashed.
        prefix_chars: usize,
        /// The ε of the load bound.
        load_factor: f64,
    },
}

/// Points per endpoint on the hash ring: enough to spread prefixes evenly
/// over a handful of replicas.
const RING_POINTS_PER_ENDPOINT: u32 = 64;

#[derive(Debug, Default)]
struct ModelCounters {
    /// Requests split between the tracks so far.
    split: u64,
    /// Where the next least-in-flight tie-break starts.
    next: usize,
}

/// A consistent-hash ring: each point's hash and the index of its endpoint
/// among the candidates it was built for.
type Ring = Arc<[(u64, usize)]>;

/// Rings kept at most, one per set of candidates seen: past it they are
/// all dropped and built again as needed (endpoint sets change rarely).
const RINGS_KEPT: usize = 1024;

#[derive(Debug, Default)]
struct Counts {
    in_flight: crate::FastMap<SocketAddr, usize>,
    models: crate::FastMap<String, ModelCounters>,
    /// The ring of each candidate list (addresses in order) seen lately.
    rings: HashMap<Vec<SocketAddr>, Ring>,
    /// Where a model's key is written to look up its counters.
    key: String,
}

impl Counts {
    /// `model`'s counters (by `namespace/aimodel`), made when missing.
    fn model(&mut self, model: &Model) -> &mut ModelCounters {
        self.key.clear();
        self.key.push_str(&model.namespace);
        self.key.push('/');
        self.key.push_str(&model.aimodel);
        crate::entry_for(&mut self.models, &self.key, ModelCounters::default)
    }

    /// The ring of `candidates`, built once per list of candidates.
    fn ring(&mut self, candidates: &[&Endpoint]) -> Ring {
        let key: Vec<SocketAddr> = candidates.iter().map(|e| e.addr).collect();
        if let Some(ring) = self.rings.get(&key) {
            return ring.clone();
        }
        if self.rings.len() >= RINGS_KEPT {
            self.rings.clear();
        }
        let ring = build_ring(&key);
        self.rings.insert(key, ring.clone());
        ring
    }
}

/// Picks endpoints and counts the requests in flight on each.
#[derive(Debug, Clone)]
pub struct Balancer {
    mode: RoutingMode,
    counts: Arc<Mutex<Counts>>,
}

/// One request in flight on an endpoint; dropping it ends the request.
#[derive(Debug)]
pub struct EndpointGuard {
    addr: SocketAddr,
    track: Track,
    counts: Arc<Mutex<Counts>>,
}

impl EndpointGuard {
    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint's track.
    pub fn track(&self) -> Track {
        self.track
    }
}

impl Drop for EndpointGuard {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.in_flight.get_mut(&self.addr) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.in_flight.remove(&self.addr);
            }
        }
    }
}

impl Balancer {
    /// A balancer picking within a track by `mode`.
    pub fn new(mode: RoutingMode) -> Self {
        Self {
            mode,
            counts: Arc::default(),
        }
    }

    /// The requests in flight on `addr` through this gateway.
    pub fn in_flight(&self, addr: SocketAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.in_flight.get(&addr).copied().unwrap_or(0)
    }

    /// Picks a ready endpoint of `model` for a new request and counts it in
    /// flight; `None` when no endpoint is ready. `prompt_prefix` is used in
    /// prefix-hash mode (see [`prompt_prefix`]).
    pub fn pick(&self, model: &Model, prompt_prefix: Option<&str>) -> Option<EndpointGuard> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let stable = ready(model, Track::Stable, None);
        let canary = ready(model, Track::Canary, None);
        let track = match (stable.is_empty(), canary.is_empty()) {
            (true, true) => return None,
            (false, true) => stable,
            (true, false) => canary,
            (false, false) => {
                let split = &mut counts.model(model).split;
                let n = *split;
                *split += 1;
                let percent = u64::from(model.canary_percent.min(100));
                // The n-th request goes to the canary when it carries the
                // running count of canary requests, floor(n * p / 100), one
                // further: exactly p of every 100 consecutive requests.
                if (n + 1) * percent / 100 > n * percent / 100 {
                    canary
                } else {
                    stable
                }
            }
        };
        Some(self.choose(&mut counts, model, &track, prompt_prefix))
    }

    /// Picks another ready endpoint than `failed` for a retry, on the same
    /// track when it has one; `None` when there is no other.
    pub fn pick_other(
        &self,
        model: &Model,
        prompt_prefix: Option<&str>,
        failed: &EndpointGuard,
    ) -> Option<EndpointGuard> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let same = ready(model, failed.track, Some(failed.addr));
        let candidates = if same.is_empty() {
            let other = match failed.track {
                Track::Stable => Track::Canary,
                Track::Canary => Track::Stable,
            };
            ready(model, other, Some(failed.addr))
        } else {
            same
        };
        if candidates.is_empty() {
            return None;
        }
        Some(self.choose(&mut counts, model, &candidates, prompt_prefix))
    }

    fn choose(
        &self,
        counts: &mut Counts,
        model: &Model,
        candidates: &[&Endpoint],
        prompt_prefix: Option<&str>,
    ) -> EndpointGuard {
        let load =
            |counts: &Counts, e: &Endpoint| counts.in_flight.get(&e.addr).copied().unwrap_or(0);
        let by_hash = match (self.mode, prompt_prefix) {
            (
                RoutingMode::PrefixHash {
                    prefix_chars,
                    load_factor,
                },
                Some(prompt),
            ) => {
                let loads: Vec<usize> = candidates.iter().map(|e| load(counts, e)).collect();
                let prefix: String = prompt.chars().take(prefix_chars).collect();
                let ring = counts.ring(candidates);
                bounded_hash_pick(&ring, &loads, &prefix, load_factor)
            }
            _ => None,
        };
        let index = by_hash.unwrap_or_else(|| {
            let start = counts.model(model).next;
            let n = candidates.len();
            let mut best = start % n;
            let mut best_load = usize::MAX;
            for i in 0..n {
                let index = (start + i) % n;
                let l = counts
                    .in_flight
                    .get(&candidates[index].addr)
                    .copied()
                    .unwrap_or(0);
                if l < best_load {
                    best = index;
                    best_load = l;
                }
            }
            counts.model(model).next = best + 1;
            best
        });
        let endpoint = candidates[index];
        *counts.in_flight.entry(endpoint.addr).or_default() += 1;
        EndpointGuard {
            addr: endpoint.addr,
            track: endpoint.track,
            counts: self.counts.clone(),
        }
    }
}

fn ready(model: &Model, track: Track, except: Option<SocketAddr>) -> Vec<&Endpoint> {
    model
        .endpoints
        .iter()
        .filter(|e| e.ready && e.track == track && Some(e.addr) != except)
        .collect()
}

/// The ring of `addrs`: `RING_POINTS_PER_ENDPOINT` points each, at the hash
/// of `addr#point`, sorted.
fn build_ring(addrs: &[SocketAddr]) -> Ring {
    let mut ring: Vec<(u64, usize)> = addrs
        .iter()
        .enumerate()
        .flat_map(|(index, addr)| {
            let addr = addr.to_string();
            (0..RING_POINTS_PER_ENDPOINT)
                .map(move |point| (fnv1a(format!("{addr}#{point}").as_bytes()), index))
        })
        .collect();
    ring.sort_unstable();
    ring.into()
}

/// The index of the candidate `prefix` hashes to on `ring` (built for the
/// candidates whose `loads` are given), walking the ring past candidates
/// whose load would exceed `(1 + load_factor)` times the average.
fn bounded_hash_pick(
    ring: &[(u64, usize)],
    loads: &[usize],
    prefix: &str,
    load_factor: f64,
) -> Option<usize> {
    let total: usize = loads.iter().sum();
    #[expect(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let capacity =
        ((1.0 + load_factor.max(0.0)) * (total + 1) as f64 / loads.len() as f64).ceil() as usize;
    let start = ring.partition_point(|(h, _)| *h < fnv1a(prefix.as_bytes()));
    (0..ring.len())
        .map(|i| ring[(start + i) % ring.len()].1)
        .find(|&index| loads[index] < capacity.max(1))
}

/// FNV-1a, 64 bits, finished with MurmurHash3's 64-bit mixer: a hash that is
/// the same in every replica and release, so all gateways send a prefix to
/// the same endpoint. FNV-1a alone barely moves the high bits when only the
/// last bytes differ (`addr#0`, `addr#1`, …), which bunches an endpoint's
/// ring points together and leaves some endpoints a small share; the mixer
/// spreads every input bit over the whole word.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// The text a request's prompt starts with, up to `chars` characters: the
/// message contents of a chat request in order, a completion's `prompt`, an
/// embedding's `input`.
pub fn prompt_prefix(request: &Value, chars: usize) -> Option<String> {
    fn push_text(value: &Value, out: &mut String, chars: usize) {
        if out.chars().count() >= chars {
            return;
        }
        match value {
            Value::String(s) => out.push_str(s),
            Value::Array(items) => items.iter().for_each(|v| push_text(v, out, chars)),
            Value::Object(map) => {
                if let Some(text) = map.get("content").or_else(|| map.get("text")) {
                    push_text(text, out, chars);
                }
            }
            _ => {}
        }
    }
    let source = request
        .get("messages")
        .or_else(|| request.get("prompt"))
        .or_else(|| request.get("input"))?;
    let mut text = String::new();
    push_text(source, &mut text, chars);
    (!text.is_empty()).then(|| text.chars().take(chars).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(endpoints: &[(u16, Track)], canary_percent: u8) -> Model {
        Model {
            name: "m".into(),
            namespace: "ns".into(),
            aimodel: "m".into(),
            served_name: "m".into(),
            created: 0,
            endpoints: endpoints
                .iter()
                .map(|(port, track)| Endpoint {
                    addr: SocketAddr::from(([127, 0, 0, 1], *port)),
                    track: *track,
                    ready: true,
                })
                .collect(),
            canary_percent,
            scale_from_zero: false,
        }
    }

    #[test]
    fn canary_split_is_exact_in_every_hundred() {
        let balancer = Balancer::new(RoutingMode::LeastInFlight);
        let m = model(&[(1, Track::Stable), (2, Track::Canary)], 7);
        let canaries = (0..100)
            .filter(|_| balancer.pick(&m, None).map(|g| g.track()) == Some(Track::Canary))
            .count();
        assert_eq!(canaries, 7);
    }

    #[test]
    fn ties_go_round_robin_and_load_wins() {
        let balancer = Balancer::new(RoutingMode::LeastInFlight);
        let m = model(
            &[(1, Track::Stable), (2, Track::Stable), (3, Track::Stable)],
            0,
        );
        let ports: Vec<u16> = (0..6)
            .map(|_| {
                balancer
                    .pick(&m, None)
                    .map(|g| g.addr().port())
                    .unwrap_or(0)
            })
            .collect();
        assert_eq!(ports, [1, 2, 3, 1, 2, 3]);
        let held = balancer.pick(&m, None);
        assert_eq!(
            held.as_ref().map(EndpointGuard::addr).map(|a| a.port()),
            Some(1)
        );
        let next = balancer.pick(&m, None);
        assert_ne!(next.map(|g| g.addr().port()), Some(1));
        drop(held);
        assert_eq!(balancer.in_flight(SocketAddr::from(([127, 0, 0, 1], 1))), 0);
    }

    #[test]
    fn prefix_hash_is_sticky_and_bounded() {
        let mode = RoutingMode::PrefixHash {
            prefix_chars: 16,
            load_factor: 0.25,
        };
        let balancer = Balancer::new(mode);
        let m = model(
            &[
                (1, Track::Stable),
                (2, Track::Stable),
                (3, Track::Stable),
                (4, Track::Stable),
            ],
            0,
        );
        let first = balancer
            .pick(&m, Some("You are a helpful assistant. Q1"))
            .map(|g| g.addr());
        let again = balancer
            .pick(&m, Some("You are a helpful assistant. Q2"))
            .map(|g| g.addr());
        assert_eq!(
            first, again,
            "the same 16-character prefix, the same endpoint"
        );
        let mut held = Vec::new();
        for _ in 0..40 {
            held.extend(balancer.pick(&m, Some("the same hot prefix for all")));
        }
        for port in 1..=4 {
            let n = balancer.in_flight(SocketAddr::from(([127, 0, 0, 1], port)));
            assert!(n <= 13, "endpoint {port} carries {n} of 40");
        }
    }

    /// Every endpoint owns a fair share of the ring, whatever its address:
    /// 1,000 distinct prompts over four endpoints, for a dozen sets of ports,
    /// give each endpoint between 10 % and 45 % of them.
    #[test]
    fn prefix_hash_spreads_distinct_prompts_over_every_endpoint() {
        let mode = RoutingMode::PrefixHash {
            prefix_chars: 32,
            load_factor: 0.25,
        };
        for base in (1_000..60_000).step_by(4_999) {
            let ports: Vec<(u16, Track)> = (0..4)
                .map(|i| (base + i * 7 + (i * i) % 5, Track::Stable))
                .collect();
            let m = model(&ports, 0);
            let balancer = Balancer::new(mode);
            let mut share = HashMap::new();
            for i in 0..1_000 {
                let addr = balancer
                    .pick(&m, Some(&format!("{i} distinct prompt")))
                    .map(|g| g.addr().port());
                *share.entry(addr).or_insert(0) += 1;
            }
            for (port, _) in &ports {
                let n = share.get(&Some(*port)).copied().unwrap_or(0);
                assert!(
                    (100..=450).contains(&n),
                    "ports {ports:?}: endpoint {port} got {n} of 1000 prompts"
                );
            }
        }
    }

    #[test]
    fn prefixes_of_chat_completion_and_embedding_requests() {
        let chat = serde_json::json!({"messages": [
            {"role": "system", "content": "abc"},
            {"role": "user", "content": [{"type": "text", "text": "defgh"}]}
        ]});
        assert_eq!(prompt_prefix(&chat, 5).as_deref(), Some("abcde"));
        let completion = serde_json::json!({"prompt": "hello"});
        assert_eq!(prompt_prefix(&completion, 3).as_deref(), Some("hel"));
        let embedding = serde_json::json!({"input": ["xy", "z"]});
        assert_eq!(prompt_prefix(&embedding, 10).as_deref(), Some("xyz"));
    }
}
