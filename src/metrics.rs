//! Counters and histograms per tenant, and the table of connected clients.
//!
//! The hot path only touches atomics of its own tenant (and its own client record):
//! no lock and no map lookup per message. A tenant's figures are made when its first
//! client connects; `admin::prom` turns them into Prometheus text on each scrape.
//!
//! Memory stays bounded however many tenants come and go: beyond
//! `admin.metrics_max_tenants` tracked tenants, those nothing refers to any more (no
//! client, no pool) are folded, least recently seen first, into one retired sum.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;

use crate::registry::TenantName;

/// Upper bounds of the latency histograms, in seconds (the last one is +Inf).
pub const BUCKETS: [f64; 16] = [
    0.0001,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    f64::MAX,
];

/// A latency histogram made of atomics: observing is three relaxed additions.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let at = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len() - 1);
        self.buckets[at].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Seconds observed in all.
    pub fn sum(&self) -> f64 {
        self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// (upper bound, observations in that bucket alone), as the encoder wants them.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(b, n)| (*b, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Adds another histogram's observations to this one.
    fn absorb(&self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter().zip(&other.buckets) {
            mine.fetch_add(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add(other.sum_micros.load(Ordering::Relaxed), Ordering::Relaxed);
        self.count.fetch_add(other.count(), Ordering::Relaxed);
    }

    pub fn average(&self) -> Duration {
        let count = self.count();
        match count {
            0 => Duration::ZERO,
            _ => Duration::from_micros(self.sum_micros.load(Ordering::Relaxed) / count),
        }
    }

    /// The upper bound of the bucket holding the 99th percentile (bucket precision).
    pub fn p99(&self) -> Duration {
        let count = self.count();
        if count == 0 {
            return Duration::ZERO;
        }
        let wanted = count - count / 100;
        let mut seen = 0;
        for (bound, n) in self.buckets() {
            seen += n;
            if seen >= wanted {
                let bound = if bound == f64::MAX { 10.0 } else { bound };
                return Duration::from_secs_f64(bound);
            }
        }
        Duration::ZERO
    }
}

/// What a client is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Connected, no server, not waiting for one.
    Idle = 0,
    /// Holds a server connection.
    Active = 1,
    /// Waiting for a server connection (pool full, host full, or tenant paused).
    Waiting = 2,
    /// Idle without a task (transaction mode, `proxy.park_after`).
    Parked = 3,
}

impl ClientState {
    pub const ALL: [ClientState; 4] = [
        ClientState::Idle,
        ClientState::Active,
        ClientState::Waiting,
        ClientState::Parked,
    ];

    fn from_u8(v: u8) -> ClientState {
        match v {
            1 => ClientState::Active,
            2 => ClientState::Waiting,
            3 => ClientState::Parked,
            _ => ClientState::Idle,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Active => "active",
            ClientState::Waiting => "waiting",
            ClientState::Parked => "parked",
        }
    }
}

/// One tenant's figures since its first client.
pub struct TenantStats {
    pub name: TenantName,
    /// Clients in each `ClientState`.
    states: [AtomicI64; 4],
    pub transactions: AtomicU64,
    pub queries: AtomicU64,
    /// Bytes read from its clients and from its servers.
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub checkout_wait: Histogram,
    pub transaction_time: Histogram,
    /// Errors sent to its clients, by SQLSTATE (rare: a lock is fine).
    errors: Mutex<HashMap<[u8; 5], u64>>,
    /// Connected clients, by id.
    clients: Mutex<HashMap<u64, Arc<ClientInfo>>>,
    /// Microseconds after the metrics' epoch when a client last came or went.
    last_seen: AtomicU64,
}

impl TenantStats {
    fn new(name: TenantName) -> TenantStats {
        TenantStats {
            name,
            states: Default::default(),
            transactions: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            checkout_wait: Histogram::default(),
            transaction_time: Histogram::default(),
            errors: Mutex::default(),
            clients: Mutex::default(),
            last_seen: AtomicU64::new(0),
        }
    }

    /// Adds a retired tenant's counts to this sum (it has no clients left).
    fn absorb(&self, other: &TenantStats) {
        for (mine, theirs) in [
            (&self.transactions, &other.transactions),
            (&self.queries, &other.queries),
            (&self.bytes_in, &other.bytes_in),
            (&self.bytes_out, &other.bytes_out),
        ] {
            mine.fetch_add(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.checkout_wait.absorb(&other.checkout_wait);
        self.transaction_time.absorb(&other.transaction_time);
        let mut errors = self.errors.lock().unwrap();
        for (code, n) in other.errors.lock().unwrap().iter() {
            *errors.entry(*code).or_default() += n;
        }
    }

    /// Clients in `state` now.
    pub fn in_state(&self, state: ClientState) -> u64 {
        self.states[state as usize].load(Ordering::Relaxed).max(0) as u64
    }

    /// Connected clients.
    pub fn client_count(&self) -> usize {
        self.clients.lock().unwrap().len()
    }

    pub fn clients(&self) -> Vec<Arc<ClientInfo>> {
        let mut clients: Vec<_> = self.clients.lock().unwrap().values().cloned().collect();
        clients.sort_by_key(|c| c.id);
        clients
    }

    /// Notes an ErrorResponse sent to a client of this tenant.
    pub fn error(&self, code: &[u8]) {
        if let Ok(code) = <[u8; 5]>::try_from(code) {
            *self.errors.lock().unwrap().entry(code).or_default() += 1;
        }
    }

    pub fn errors(&self) -> Vec<(String, u64)> {
        let mut errors: Vec<_> = self
            .errors
            .lock()
            .unwrap()
            .iter()
            .map(|(code, n)| (String::from_utf8_lossy(code).into_owned(), *n))
            .collect();
        errors.sort();
        errors
    }

    /// How busy the tenant has been: what orders tenants on the page and decides
    /// which are folded together in the metrics.
    pub fn activity(&self) -> u64 {
        self.queries.load(Ordering::Relaxed) + self.client_count() as u64
    }
}

/// A connected client, as the console and the limits see it.
pub struct ClientInfo {
    pub id: u64,
    pub tenant: Arc<TenantStats>,
    pub user: String,
    pub peer: SocketAddr,
    pub mode: &'static str,
    pub connected_at: SystemTime,
    epoch: Instant,
    state: AtomicU8,
    /// The server left the client inside a transaction block (ReadyForQuery 'T'/'E').
    in_transaction: AtomicBool,
    /// Everything the client asked was answered (ReadyForQuery came last).
    at_rest: AtomicBool,
    /// Closed from outside (KILL, a timeout): told once.
    terminated: AtomicBool,
    /// A query or Execute was sent since the last ReadyForQuery 'I': the exchange that
    /// ends there is a transaction (a Parse/Describe/Sync alone is not).
    ran_query: AtomicBool,
    /// Microseconds after `epoch` of the last thing the client or its server did.
    last_active: AtomicU64,
    /// Microseconds after `epoch` when the current transaction began; 0 when none.
    transaction_began: AtomicU64,
    /// Process id of the server it holds; 0 when none.
    server_pid: AtomicI32,
    /// The client's socket, while open: closing a client from outside its task
    /// shuts it down, which its task (or the parking lot) sees as the client leaving.
    fd: Mutex<RawFd>,
}

impl ClientInfo {
    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn in_transaction(&self) -> bool {
        self.in_transaction.load(Ordering::Relaxed)
    }

    /// Nothing the client asked is still being answered.
    pub fn at_rest(&self) -> bool {
        self.at_rest.load(Ordering::Relaxed)
    }

    /// How long since the client or its server last did something.
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_micros(self.last_active.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    pub fn server_pid(&self) -> Option<i32> {
        match self.server_pid.load(Ordering::Relaxed) {
            0 => None,
            pid => Some(pid),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Ends the client from outside its task: `fatal` (an ErrorResponse) is written
    /// when the client is not in the middle of receiving something, then the socket
    /// is shut down. Whether the client was still connected.
    pub fn terminate(&self, fatal: &[u8]) -> bool {
        let fd = self.fd.lock().unwrap();
        if *fd < 0 || self.terminated.swap(true, Ordering::Relaxed) {
            return false;
        }
        if self.state() != ClientState::Active || self.at_rest.load(Ordering::Relaxed) {
            // SAFETY: `fd` is the client's open socket: it is set to -1 under this
            // lock before the socket is closed (`ClientSeen::socket_closing`).
            unsafe {
                libc::send(
                    *fd,
                    fatal.as_ptr().cast(),
                    fatal.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                );
            }
        }
        // SAFETY: as above.
        unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
        true
    }
}

/// A client's entry in the tables, held by its session (and its parked record) for
/// as long as it is connected; dropping it counts the client out.
pub struct ClientSeen(Arc<ClientInfo>);

impl ClientSeen {
    pub fn info(&self) -> &Arc<ClientInfo> {
        &self.0
    }

    pub fn tenant(&self) -> &TenantStats {
        &self.0.tenant
    }

    pub fn set_state(&self, state: ClientState) {
        let old = self.0.state.swap(state as u8, Ordering::Relaxed);
        if old != state as u8 {
            let states = &self.0.tenant.states;
            states[old as usize].fetch_sub(1, Ordering::Relaxed);
            states[state as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The client attached a server (`pid`) or let it go (`None`).
    pub fn server(&self, pid: Option<i32>) {
        self.0.server_pid.store(pid.unwrap_or(0), Ordering::Relaxed);
        self.set_state(match pid {
            Some(_) => ClientState::Active,
            None => ClientState::Idle,
        });
    }

    /// `n` bytes came from the client.
    pub fn client_read(&self, n: usize) {
        self.0
            .tenant
            .bytes_in
            .fetch_add(n as u64, Ordering::Relaxed);
        self.client_spoke();
    }

    /// `n` bytes came from the client's server.
    pub fn server_read(&self, n: usize) {
        self.0
            .tenant
            .bytes_out
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The client sent a message with `tag`: queries and Executes count as queries.
    pub fn client_sent(&self, tag: u8) {
        if matches!(tag, b'Q' | b'E') {
            self.0.tenant.queries.fetch_add(1, Ordering::Relaxed);
            self.0.ran_query.store(true, Ordering::Relaxed);
        }
    }

    /// The client sent something: a transaction starts if none runs.
    pub fn client_spoke(&self) {
        let now = self.0.now();
        self.0.last_active.store(now, Ordering::Relaxed);
        self.0.at_rest.store(false, Ordering::Relaxed);
        if self.0.transaction_began.load(Ordering::Relaxed) == 0 {
            self.0
                .transaction_began
                .store(now.max(1), Ordering::Relaxed);
        }
    }

    /// ReadyForQuery with `status`: at 'I' a transaction ended.
    pub fn ready(&self, status: u8) {
        let now = self.0.now();
        self.0.last_active.store(now, Ordering::Relaxed);
        self.0
            .in_transaction
            .store(status != b'I', Ordering::Relaxed);
        self.0.at_rest.store(true, Ordering::Relaxed);
        if status == b'I' {
            let tenant = &self.0.tenant;
            let began = self.0.transaction_began.swap(0, Ordering::Relaxed);
            if self.0.ran_query.swap(false, Ordering::Relaxed) {
                tenant.transactions.fetch_add(1, Ordering::Relaxed);
                let took = if began == 0 {
                    0
                } else {
                    now.saturating_sub(began)
                };
                tenant.transaction_time.observe(Duration::from_micros(took));
            }
        }
    }

    /// The socket is about to be closed, or to change hands (`None`), or its new
    /// descriptor (`Some`): a `terminate` never touches a descriptor not the client's.
    pub fn socket(&self, fd: Option<RawFd>) {
        *self.0.fd.lock().unwrap() = fd.unwrap_or(-1);
    }
}

impl Drop for ClientSeen {
    fn drop(&mut self) {
        self.socket(None);
        let c = &self.0;
        c.tenant.last_seen.store(c.now(), Ordering::Relaxed);
        tracing::info!(client = %format_args!("c{}", c.id), tenant = %c.tenant.name, user = %c.user, peer = %c.peer, "client disconnected");
        let tenant = &self.0.tenant;
        tenant.states[self.0.state.load(Ordering::Relaxed) as usize]
            .fetch_sub(1, Ordering::Relaxed);
        tenant.clients.lock().unwrap().remove(&self.0.id);
    }
}

/// Everything counted in one proxy instance.
pub struct Metrics {
    tenants: DashMap<TenantName, Arc<TenantStats>>,
    epoch: Instant,
    pub started_at: SystemTime,
    /// Refusals by SQLSTATE, whatever the tenant (or none: an unknown tenant).
    refusals: Mutex<HashMap<String, u64>>,
    /// Tenants tracked one by one before idle ones are retired.
    max_tenants: AtomicUsize,
    /// The figures of retired tenants, summed.
    retired: TenantStats,
    retired_count: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            tenants: DashMap::new(),
            epoch: Instant::now(),
            started_at: SystemTime::now(),
            refusals: Mutex::default(),
            max_tenants: AtomicUsize::new(1000),
            retired: TenantStats::new(TenantName::new("_other")),
            retired_count: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// A tenant's figures, made on first use.
    pub fn tenant(&self, name: &TenantName) -> Arc<TenantStats> {
        if let Some(stats) = self.tenants.get(name) {
            return stats.clone();
        }
        let stats = self
            .tenants
            .entry(name.clone())
            .or_insert_with(|| Arc::new(TenantStats::new(name.clone())))
            .clone();
        // Only a tenant new to the table can take it past its bound.
        let max = self.max_tenants.load(Ordering::Relaxed);
        if self.tenants.len() > max {
            self.retire(max);
        }
        stats
    }

    /// Retires what it can when more tenants than the bound are tracked: run by the
    /// pools' upkeep, as tenants that had pools become unreferenced only later.
    pub fn retire_beyond_bound(&self) {
        let max = self.max_tenants.load(Ordering::Relaxed);
        if self.tenants.len() > max {
            self.retire(max);
        }
    }

    /// `admin.metrics_max_tenants`.
    pub fn set_max_tenants(&self, max: usize) {
        self.max_tenants.store(max.max(1), Ordering::Relaxed);
    }

    /// Folds tenants nothing refers to (no client, no pool: only this table holds
    /// them), least recently seen first, into the retired sum until at most `keep`
    /// are tracked (a little under, so the next new tenants do not scan again).
    fn retire(&self, keep: usize) {
        let target = keep - keep / 8;
        let mut idle: Vec<(u64, TenantName)> = self
            .tenants
            .iter()
            .filter(|t| Arc::strong_count(t.value()) == 1)
            .map(|t| (t.last_seen.load(Ordering::Relaxed), t.key().clone()))
            .collect();
        idle.sort_unstable();
        for (_, name) in idle {
            if self.tenants.len() <= target {
                break;
            }
            // Checked again under the map's lock: a client may have come meanwhile.
            if let Some((_, gone)) = self
                .tenants
                .remove_if(&name, |_, t| Arc::strong_count(t) == 1)
            {
                self.retired.absorb(&gone);
                self.retired_count.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Tenants whose figures are kept one by one now.
    pub fn tracked(&self) -> usize {
        self.tenants.len()
    }

    /// How many tenants were retired, and their figures summed.
    pub fn retired(&self) -> (u64, &TenantStats) {
        (self.retired_count.load(Ordering::Relaxed), &self.retired)
    }

    pub fn find_tenant(&self, name: &str) -> Option<Arc<TenantStats>> {
        self.tenants.get(&TenantName::new(name)).map(|s| s.clone())
    }

    /// Every tenant seen, by name.
    pub fn tenants(&self) -> Vec<Arc<TenantStats>> {
        let mut all: Vec<_> = self.tenants.iter().map(|t| t.value().clone()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Enters a connected client; it counts (and `proxy.max_client_conn_per_tenant`
    /// holds) until the returned entry is dropped. `None` when the tenant already
    /// has `limit` clients.
    #[allow(clippy::too_many_arguments)]
    pub fn client_connected(
        &self,
        id: u64,
        tenant: &TenantName,
        user: &str,
        peer: SocketAddr,
        mode: &'static str,
        fd: RawFd,
        limit: usize,
    ) -> Option<ClientSeen> {
        let stats = self.tenant(tenant);
        let info = Arc::new(ClientInfo {
            id,
            tenant: stats.clone(),
            user: user.to_string(),
            peer,
            mode,
            connected_at: SystemTime::now(),
            epoch: self.epoch,
            state: AtomicU8::new(ClientState::Idle as u8),
            in_transaction: AtomicBool::new(false),
            at_rest: AtomicBool::new(true),
            terminated: AtomicBool::new(false),
            ran_query: AtomicBool::new(false),
            last_active: AtomicU64::new(self.epoch.elapsed().as_micros() as u64),
            transaction_began: AtomicU64::new(0),
            server_pid: AtomicI32::new(0),
            fd: Mutex::new(fd),
        });
        {
            let mut clients = stats.clients.lock().unwrap();
            if clients.len() >= limit {
                return None;
            }
            clients.insert(id, info.clone());
        }
        stats.states[ClientState::Idle as usize].fetch_add(1, Ordering::Relaxed);
        stats
            .last_seen
            .store(self.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
        Some(ClientSeen(info))
    }

    pub fn refused(&self, code: &str) {
        *self
            .refusals
            .lock()
            .unwrap()
            .entry(code.to_string())
            .or_default() += 1;
    }

    pub fn refusals(&self) -> Vec<(String, u64)> {
        let mut all: Vec<_> = self
            .refusals
            .lock()
            .unwrap()
            .iter()
            .map(|(c, n)| (c.clone(), *n))
            .collect();
        all.sort();
        all
    }

    pub fn uptime(&self) -> Duration {
        self.epoch.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_average_and_p99() {
        let h = Histogram::default();
        for _ in 0..99 {
            h.observe(Duration::from_micros(300));
        }
        h.observe(Duration::from_secs(2));
        assert_eq!(h.count(), 100);
        assert_eq!(h.p99(), Duration::from_secs_f64(0.0005));
        assert!(h.average() > Duration::from_micros(300));
        let total: u64 = h.buckets().iter().map(|(_, n)| n).sum();
        assert_eq!(total, 100);
    }

    #[test]
    fn tenants_nothing_refers_to_are_retired_beyond_the_bound() {
        let metrics = Metrics::default();
        metrics.set_max_tenants(8);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let held = metrics
            .client_connected(1, &TenantName::new("held"), "app", peer, "session", -1, 9)
            .unwrap();
        for i in 0..100 {
            let name = TenantName::new(&format!("t{i}"));
            let seen = metrics
                .client_connected(i + 2, &name, "app", peer, "session", -1, 9)
                .unwrap();
            seen.client_spoke();
            seen.client_sent(b'Q');
            seen.ready(b'I');
            seen.tenant().error(b"42P01");
            drop(seen);
            assert!(metrics.tracked() <= 8, "{} tracked", metrics.tracked());
        }
        // The connected tenant stays; the others' figures are summed, not lost.
        assert!(metrics.find_tenant("held").is_some());
        let (retired, sum) = metrics.retired();
        let kept: u64 = metrics
            .tenants()
            .iter()
            .map(|t| t.transactions.load(Ordering::Relaxed))
            .sum();
        assert!(retired >= 92, "{retired}");
        assert_eq!(sum.transactions.load(Ordering::Relaxed) + kept, 100);
        assert_eq!(sum.transaction_time.count() + kept, 100);
        assert_eq!(sum.errors()[0].1 + kept, 100);
        drop(held);
    }

    #[test]
    fn clients_count_per_state_and_limit() {
        let metrics = Metrics::default();
        let tenant = TenantName::new("acme");
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let a = metrics
            .client_connected(1, &tenant, "app", peer, "session", -1, 2)
            .unwrap();
        let b = metrics
            .client_connected(2, &tenant, "app", peer, "session", -1, 2)
            .unwrap();
        assert!(metrics
            .client_connected(3, &tenant, "app", peer, "session", -1, 2)
            .is_none());
        a.server(Some(42));
        let stats = metrics.tenant(&tenant);
        assert_eq!(stats.in_state(ClientState::Active), 1);
        assert_eq!(stats.in_state(ClientState::Idle), 1);
        a.client_spoke();
        a.client_sent(b'Q');
        a.ready(b'T');
        assert!(a.info().in_transaction());
        a.ready(b'I');
        assert_eq!(stats.transactions.load(Ordering::Relaxed), 1);
        assert_eq!(stats.transaction_time.count(), 1);
        drop(a);
        drop(b);
        assert_eq!(stats.client_count(), 0);
        assert_eq!(stats.in_state(ClientState::Active), 0);
        assert_eq!(stats.in_state(ClientState::Idle), 0);
    }
}
