//! /metrics: the tenants' figures, the hosts' budgets and the process, encoded by
//! `prometheus-client` on each scrape. Tenants beyond `admin.metrics_max_tenants`
//! (the least active) are summed under `tenant="_other"`, so a proxy with 100,000
//! tenants does not make 100,000 series per family.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::app::App;
use crate::metrics::{ClientState, Histogram, TenantStats, BUCKETS};

/// The label value under which folded tenants are summed.
pub const OTHER: &str = "_other";

/// What one tenant (or the fold of several) shows in one scrape.
#[derive(Debug, Clone, Default)]
struct TenantFigures {
    clients: [u64; 4],
    servers_active: u64,
    servers_idle: u64,
    paused: u64,
    transactions: u64,
    queries: u64,
    bytes_in: u64,
    bytes_out: u64,
    wait: HistogramFigures,
    transaction: HistogramFigures,
    errors: BTreeMap<String, u64>,
}

#[derive(Debug, Clone)]
struct HistogramFigures {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl Default for HistogramFigures {
    fn default() -> Self {
        HistogramFigures {
            sum: 0.0,
            count: 0,
            buckets: BUCKETS.iter().map(|b| (*b, 0)).collect(),
        }
    }
}

impl HistogramFigures {
    fn add(&mut self, h: &Histogram) {
        self.sum += h.sum();
        self.count += h.count();
        for (mine, (_, n)) in self.buckets.iter_mut().zip(h.buckets()) {
            mine.1 += n;
        }
    }
}

impl TenantFigures {
    fn add(&mut self, t: &TenantStats, servers: (u64, u64), paused: bool) {
        for (i, state) in ClientState::ALL.iter().enumerate() {
            self.clients[i] += t.in_state(*state);
        }
        self.servers_active += servers.0;
        self.servers_idle += servers.1;
        self.paused += u64::from(paused);
        self.transactions += t.transactions.load(Ordering::Relaxed);
        self.queries += t.queries.load(Ordering::Relaxed);
        self.bytes_in += t.bytes_in.load(Ordering::Relaxed);
        self.bytes_out += t.bytes_out.load(Ordering::Relaxed);
        self.wait.add(&t.checkout_wait);
        self.transaction.add(&t.transaction_time);
        for (code, n) in t.errors() {
            *self.errors.entry(code).or_default() += n;
        }
    }
}

#[derive(Debug, Clone)]
struct HostFigures {
    host: String,
    address: String,
    max: u64,
    open: u64,
    waiting: u64,
    opens: u64,
}

/// One scrape's figures, taken before encoding.
#[derive(Debug)]
struct Scrape {
    tenants: Vec<(String, TenantFigures)>,
    folded: u64,
    tracked: u64,
    retired: u64,
    hosts: Vec<HostFigures>,
    clients: u64,
    parked: u64,
    refusals: Vec<(String, u64)>,
    process: Process,
}

#[derive(Debug, Default)]
struct Process {
    resident_bytes: u64,
    open_fds: u64,
    cpu_seconds: f64,
    start_time: f64,
}

/// The /metrics body (OpenMetrics text).
pub fn render(app: &App) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape(app)));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("writing to a String does not fail");
    text
}

fn scrape(app: &App) -> Scrape {
    let mut servers: HashMap<String, (u64, u64)> = HashMap::new();
    for p in app.pools.report() {
        let s = servers.entry(p.tenant.to_string()).or_default();
        s.0 += p.active as u64;
        s.1 += p.idle as u64;
    }
    let mut tenants = app.metrics.tenants();
    // Most active first; the tail beyond the bound is folded.
    tenants.sort_by_key(|t| std::cmp::Reverse(t.activity()));
    let max = app.settings.admin.metrics_max_tenants;
    let mut shown = Vec::new();
    let mut other = TenantFigures::default();
    let mut folded = 0;
    for (i, t) in tenants.iter().enumerate() {
        let s = servers.get(t.name.as_str()).copied().unwrap_or_default();
        let paused = app.pools.is_paused(&t.name);
        if i < max {
            let mut f = TenantFigures::default();
            f.add(t, s, paused);
            shown.push((t.name.to_string(), f));
        } else {
            other.add(t, s, paused);
            folded += 1;
        }
    }
    // Tenants retired from memory (nothing referred to them) keep counting here.
    let (retired, sum) = app.metrics.retired();
    if retired > 0 {
        other.add(sum, (0, 0), false);
    }
    if folded > 0 || retired > 0 {
        shown.push((OTHER.to_string(), other));
    }
    let snapshot = app.registry.snapshot();
    let names: HashMap<String, String> = snapshot
        .hosts()
        .map(|h| (h.address.clone(), h.name.to_string()))
        .collect();
    let hosts = app
        .pools
        .hosts_report()
        .into_iter()
        .map(|h| HostFigures {
            host: names.get(&h.address).cloned().unwrap_or_default(),
            address: h.address,
            max: h.max_connections as u64,
            open: h.open as u64,
            waiting: h.waiting as u64,
            opens: h.opens,
        })
        .collect();
    Scrape {
        tenants: shown,
        folded,
        tracked: app.metrics.tracked() as u64,
        retired,
        hosts,
        clients: app.clients.load(Ordering::Relaxed) as u64,
        parked: app.parking.len() as u64,
        refusals: app.metrics.refusals(),
        process: process(app),
    }
}

fn process(app: &App) -> Process {
    let mut p = Process {
        start_time: app
            .metrics
            .started_at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default(),
        ..Process::default()
    };
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        if let Some(rss) = statm
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
        {
            p.resident_bytes = rss * page;
        }
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may hold spaces) start after ')'.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime = fields.get(11).and_then(|v| v.parse::<f64>().ok());
            let stime = fields.get(12).and_then(|v| v.parse::<f64>().ok());
            p.cpu_seconds = (utime.unwrap_or(0.0) + stime.unwrap_or(0.0)) / ticks;
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        p.open_fds = dir.count() as u64;
    }
    p
}

type Result = std::result::Result<(), std::fmt::Error>;

fn gauge<'a>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Vec<(&'a str, String)>, f64)>,
) -> Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in values {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter<'a>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Vec<(&'a str, String)>, u64)>,
) -> Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in values {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(String, &HistogramFigures)],
) -> Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (tenant, h) in values {
        let labels = vec![("tenant", tenant.clone())];
        m.encode_family(&labels)?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                h.sum, h.count, &h.buckets, None,
            )?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result {
        let t = &self.tenants;
        let tenant = |name: &String| vec![("tenant", name.clone())];
        gauge(
            &mut e,
            "pgtenant_tenant_clients",
            "Clients of the tenant connected now, by state (active: holds a server; waiting: for a server; parked: idle without a task).",
            t.iter().flat_map(|(name, f)| {
                ClientState::ALL.iter().enumerate().map(move |(i, s)| {
                    (
                        vec![("tenant", name.clone()), ("state", s.name().to_string())],
                        f.clients[i] as f64,
                    )
                })
            }),
        )?;
        gauge(
            &mut e,
            "pgtenant_tenant_servers",
            "Server connections of the tenant, by state (active: lent to a client).",
            t.iter().flat_map(|(name, f)| {
                [("active", f.servers_active), ("idle", f.servers_idle)].map(|(s, v)| {
                    (
                        vec![("tenant", name.clone()), ("state", s.to_string())],
                        v as f64,
                    )
                })
            }),
        )?;
        gauge(
            &mut e,
            "pgtenant_tenant_paused",
            "1 while the tenant is paused (PAUSE); for _other, how many folded tenants are.",
            t.iter().map(|(name, f)| (tenant(name), f.paused as f64)),
        )?;
        for (name, help, get) in [
            (
                "pgtenant_tenant_transactions",
                "Transactions completed by the tenant's clients (ReadyForQuery idle).",
                (|f: &TenantFigures| f.transactions) as fn(&TenantFigures) -> u64,
            ),
            (
                "pgtenant_tenant_queries",
                "Queries (simple Query and extended Execute) sent by the tenant's clients.",
                |f| f.queries,
            ),
            (
                "pgtenant_tenant_received_bytes",
                "Bytes received from the tenant's clients.",
                |f| f.bytes_in,
            ),
            (
                "pgtenant_tenant_sent_bytes",
                "Bytes received from the tenant's servers for its clients.",
                |f| f.bytes_out,
            ),
        ] {
            counter(
                &mut e,
                name,
                help,
                t.iter().map(|(n, f)| (tenant(n), get(f))),
            )?;
        }
        counter(
            &mut e,
            "pgtenant_tenant_errors",
            "Errors sent to the tenant's clients, by SQLSTATE (server errors and the proxy's own).",
            t.iter().flat_map(|(name, f)| {
                f.errors.iter().map(move |(code, n)| {
                    (
                        vec![("tenant", name.clone()), ("sqlstate", code.clone())],
                        *n,
                    )
                })
            }),
        )?;
        let waits: Vec<_> = t.iter().map(|(n, f)| (n.clone(), &f.wait)).collect();
        histogram(
            &mut e,
            "pgtenant_tenant_checkout_wait_seconds",
            "Time a client waited for a server connection of the tenant.",
            &waits,
        )?;
        let xacts: Vec<_> = t.iter().map(|(n, f)| (n.clone(), &f.transaction)).collect();
        histogram(
            &mut e,
            "pgtenant_tenant_transaction_seconds",
            "Time from a client's first message of a transaction to its end.",
            &xacts,
        )?;
        gauge(
            &mut e,
            "pgtenant_tenants_folded",
            "Tenants summed under tenant=\"_other\" (beyond admin.metrics_max_tenants).",
            [(vec![], self.folded as f64)],
        )?;
        gauge(
            &mut e,
            "pgtenant_tenants_tracked",
            "Tenants whose figures the proxy keeps one by one now.",
            [(vec![], self.tracked as f64)],
        )?;
        counter(
            &mut e,
            "pgtenant_tenants_retired",
            "Tenants whose figures were folded into tenant=\"_other\" for good: no client and no pool left, beyond admin.metrics_max_tenants.",
            [(vec![], self.retired)],
        )?;
        let host = |h: &HostFigures| vec![("host", h.host.clone()), ("address", h.address.clone())];
        gauge(
            &mut e,
            "pgtenant_host_connections",
            "Server connections open on the host now.",
            self.hosts.iter().map(|h| (host(h), h.open as f64)),
        )?;
        gauge(
            &mut e,
            "pgtenant_host_max_connections",
            "The host's connection budget (max_connections in the registry).",
            self.hosts.iter().map(|h| (host(h), h.max as f64)),
        )?;
        gauge(
            &mut e,
            "pgtenant_host_tenants_waiting",
            "Tenants queued for room on the host.",
            self.hosts.iter().map(|h| (host(h), h.waiting as f64)),
        )?;
        counter(
            &mut e,
            "pgtenant_host_connection_opens",
            "Server connections opened on the host.",
            self.hosts.iter().map(|h| (host(h), h.opens)),
        )?;
        gauge(
            &mut e,
            "pgtenant_clients",
            "Clients connected now (tenants and console), parked ones included.",
            [(vec![], self.clients as f64)],
        )?;
        gauge(
            &mut e,
            "pgtenant_parked_clients",
            "Idle transaction-mode clients parked without a task.",
            [(vec![], self.parked as f64)],
        )?;
        counter(
            &mut e,
            "pgtenant_refusals",
            "Connections refused or ended by the proxy, by SQLSTATE.",
            self.refusals
                .iter()
                .map(|(code, n)| (vec![("sqlstate", code.clone())], *n)),
        )?;
        let p = &self.process;
        gauge(
            &mut e,
            "pgtenant_process_resident_memory_bytes",
            "Resident memory of the process.",
            [(vec![], p.resident_bytes as f64)],
        )?;
        gauge(
            &mut e,
            "pgtenant_process_open_fds",
            "Open file descriptors of the process.",
            [(vec![], p.open_fds as f64)],
        )?;
        gauge(
            &mut e,
            "pgtenant_process_start_time_seconds",
            "Start time of the process, in seconds since the Unix epoch.",
            [(vec![], p.start_time)],
        )?;
        let mut m = e.encode_descriptor(
            "pgtenant_process_cpu_seconds",
            "CPU time used by the process (user and system).",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(p.cpu_seconds).encode(m.encode_family(&Vec::<(&str, String)>::new())?)?;
        Ok(())
    }
}
