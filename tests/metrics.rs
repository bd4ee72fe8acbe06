//! The HTTP listener: /metrics scraped under load and checked against what the load
//! did, label folding beyond admin.metrics_max_tenants, /healthz, /readyz and the
//! bearer token.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

const HTTP: &str = "[admin]\nhttp_listen = \"127.0.0.1:0\"\n";

async fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let client = reqwest::Client::new();
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("HTTP request");
    let status = response.status().as_u16();
    (status, response.text().await.expect("HTTP body"))
}

/// Samples of the exposition: "name{labels}" -> value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.trim_end_matches("{}").to_string(), value.parse().ok()?))
        })
        .collect()
}

fn sample(samples: &HashMap<String, f64>, key: &str) -> f64 {
    *samples.get(key).unwrap_or_else(|| {
        panic!(
            "no sample {key}; have {:?}",
            samples.keys().collect::<Vec<_>>()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_load_did() {
    let env = EnvBuilder::erp()
        .settings(&format!(
            "{HTTP}[proxy]\npool_mode = \"transaction\"\npark_after = \"0s\"\n"
        ))
        .start()
        .await;
    let base = format!("http://{}", env.server().http_addr().unwrap());
    const CLIENTS: usize = 8;
    const QUERIES: usize = 50;
    let mut load = Vec::new();
    for _ in 0..CLIENTS {
        let c = env.connect("app", "acme").await;
        load.push(tokio::spawn(async move {
            for _ in 0..QUERIES {
                c.query("SELECT name FROM items WHERE id = $1", &[&1i32])
                    .await
                    .unwrap();
            }
            c
        }));
    }
    // Scrapes while the load runs parse and never go backwards.
    let mut last = 0.0;
    for _ in 0..5 {
        let (status, text) = get(&format!("{base}/metrics"), None).await;
        assert_eq!(status, 200);
        let s = samples(&text);
        let q = s
            .get("pgtenant_tenant_queries_total{tenant=\"acme\"}")
            .copied()
            .unwrap_or(0.0);
        assert!(q >= last, "queries went from {last} to {q}");
        last = q;
    }
    let mut clients = Vec::new();
    for l in load {
        clients.push(l.await.unwrap());
    }
    let err = clients[0].simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "22012");

    let (_, text) = get(&format!("{base}/metrics"), None).await;
    let s = samples(&text);
    let n = (CLIENTS * QUERIES) as f64;
    // Each query: one Execute, one implicit transaction; then the failing one.
    assert_eq!(
        sample(&s, "pgtenant_tenant_queries_total{tenant=\"acme\"}"),
        n + 1.0
    );
    assert_eq!(
        sample(&s, "pgtenant_tenant_transactions_total{tenant=\"acme\"}"),
        n + 1.0
    );
    assert_eq!(
        sample(
            &s,
            "pgtenant_tenant_transaction_seconds_count{tenant=\"acme\"}"
        ),
        n + 1.0
    );
    assert_eq!(
        sample(
            &s,
            "pgtenant_tenant_transaction_seconds_bucket{le=\"+Inf\",tenant=\"acme\"}"
        ),
        n + 1.0
    );
    assert!(
        sample(
            &s,
            "pgtenant_tenant_checkout_wait_seconds_count{tenant=\"acme\"}"
        ) >= n
    );
    assert_eq!(
        sample(
            &s,
            "pgtenant_tenant_errors_total{tenant=\"acme\",sqlstate=\"22012\"}"
        ),
        1.0
    );
    assert!(sample(&s, "pgtenant_tenant_received_bytes_total{tenant=\"acme\"}") > n * 20.0);
    assert!(sample(&s, "pgtenant_tenant_sent_bytes_total{tenant=\"acme\"}") > n * 20.0);
    let state = |st: &str| {
        sample(
            &s,
            &format!("pgtenant_tenant_clients{{tenant=\"acme\",state=\"{st}\"}}"),
        )
    };
    assert_eq!(
        state("idle") + state("parked"),
        CLIENTS as f64,
        "active {} waiting {}",
        state("active"),
        state("waiting")
    );
    assert_eq!(
        sample(
            &s,
            "pgtenant_tenant_servers{tenant=\"acme\",state=\"active\"}"
        ),
        0.0
    );
    let host = "host=\"pg-a\",address=\"".to_string() + &env.host_address("pg-a") + "\"";
    let open = sample(&s, &format!("pgtenant_host_connections{{{host}}}"));
    assert!(open >= 1.0 && open <= CLIENTS as f64, "{open}");
    assert_eq!(
        sample(&s, &format!("pgtenant_host_max_connections{{{host}}}")),
        50.0
    );
    assert!(
        sample(
            &s,
            &format!("pgtenant_host_connection_opens_total{{{host}}}")
        ) >= open
    );
    assert_eq!(sample(&s, "pgtenant_clients"), CLIENTS as f64);
    assert!(sample(&s, "pgtenant_process_resident_memory_bytes") > 1e6);
    assert!(sample(&s, "pgtenant_process_open_fds") > 0.0);
    assert!(text.ends_with("# EOF\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_beyond_the_bound_fold_into_other() {
    let env = EnvBuilder::erp()
        .settings(&format!("{HTTP}metrics_max_tenants = 1\n"))
        .start()
        .await;
    let base = format!("http://{}", env.server().http_addr().unwrap());
    let acme = env.connect("app", "acme").await;
    for _ in 0..5 {
        items(&acme).await;
    }
    let globex = env.connect("app", "globex").await;
    items(&globex).await;
    let (_, text) = get(&format!("{base}/metrics"), None).await;
    let s = samples(&text);
    assert_eq!(
        sample(&s, "pgtenant_tenant_queries_total{tenant=\"acme\"}"),
        5.0
    );
    assert_eq!(
        sample(&s, "pgtenant_tenant_queries_total{tenant=\"_other\"}"),
        1.0
    );
    assert!(!text.contains("tenant=\"globex\""), "{text}");
    assert_eq!(sample(&s, "pgtenant_tenants_folded"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_token() {
    let mut env = EnvBuilder::erp()
        .settings(&format!("{HTTP}http_token = \"s3cret\"\n"))
        .start()
        .await;
    let base = format!("http://{}", env.server().http_addr().unwrap());
    assert_eq!(get(&format!("{base}/healthz"), None).await.0, 200);
    assert_eq!(get(&format!("{base}/metrics"), None).await.0, 401);
    assert_eq!(get(&format!("{base}/metrics"), Some("wrong")).await.0, 401);
    assert_eq!(get(&format!("{base}/metrics"), Some("s3cret")).await.0, 200);
    assert_eq!(get(&format!("{base}/readyz"), Some("s3cret")).await.0, 200);
    let (status, page) = get(&format!("{base}/?token=s3cret"), None).await;
    assert_eq!(status, 200);
    assert!(page.contains("<table id=\"tenants\">"));
    // Stopping: not ready any more (the listener outlives the proxy's clients).
    let app = env.server().app().clone();
    env.stop().await;
    assert!(*app.shutdown.borrow());
    assert_eq!(get(&format!("{base}/readyz"), Some("s3cret")).await.0, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_asks_only_for_exported_series() {
    let env = EnvBuilder::erp().settings(HTTP).start().await;
    let acme = env.connect("app", "acme").await;
    items(&acme).await;
    let _ = acme.simple_query("SELECT 1/0").await;
    let (_, text) = get(
        &format!("http://{}/metrics", env.server().http_addr().unwrap()),
        None,
    )
    .await;
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/pgtenant.json"),
    )
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("valid JSON");
    let mut asked = Vec::new();
    for panel in json["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("pgtenant_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                asked.push(name);
            }
        }
    }
    assert!(asked.len() > 10);
    for name in asked {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "the dashboard asks for {name}, which /metrics does not export"
        );
    }
}

/// Several tenants with known numbers of transactions and errors: per tenant the
/// counters, the errors by SQLSTATE and the checkout-wait histogram's count (one
/// checkout per transaction in transaction mode) match what the load did exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_checkout_waits_count_per_tenant() {
    let env = EnvBuilder::erp()
        .settings(&format!(
            "{HTTP}[proxy]\npool_mode = \"transaction\"\npark_after = \"0s\"\n[pool]\npool_size = 2\n"
        ))
        .start()
        .await;
    let base = format!("http://{}", env.server().http_addr().unwrap());
    // (tenant, clients, queries each, failing statement, its SQLSTATE, failures)
    let plan = [
        ("acme", 4, 30, "SELECT 1/0", "22012", 3),
        ("globex", 3, 20, "SELECT * FROM no_such_table", "42P01", 2),
    ];
    let mut connected = Vec::new();
    for (tenant, clients, ..) in plan {
        for _ in 0..clients {
            connected.push((tenant, env.connect("app", tenant).await));
        }
    }
    // What connecting alone cost (a tenant's first client may need a server to
    // learn what to greet with).
    let (_, text) = get(&format!("{base}/metrics"), None).await;
    let before = samples(&text);
    let waits_before = |tenant: &str| {
        before
            .get(&format!(
                "pgtenant_tenant_checkout_wait_seconds_count{{tenant=\"{tenant}\"}}"
            ))
            .copied()
            .unwrap_or(0.0)
    };

    let mut load = Vec::new();
    for (tenant, client) in connected {
        let queries = plan.iter().find(|p| p.0 == tenant).unwrap().2;
        load.push(tokio::spawn(async move {
            for i in 0..queries {
                // Simple protocol: one message, one server exchange, one checkout.
                client.simple_query(&format!("SELECT {i}")).await.unwrap();
            }
            (tenant, client)
        }));
    }
    let mut clients = Vec::new();
    for l in load {
        clients.push(l.await.unwrap());
    }
    for (tenant, _, _, failing, code, failures) in plan {
        let (_, client) = clients.iter().find(|(t, _)| *t == tenant).unwrap();
        for _ in 0..failures {
            let err = client.simple_query(failing).await.unwrap_err();
            assert_eq!(err.code().unwrap().code(), code);
        }
    }
    // Refusals of the proxy's own, counted whatever the tenant.
    for _ in 0..2 {
        assert!(env.try_connect("app", "no_such_tenant").await.is_err());
    }

    let (_, text) = get(&format!("{base}/metrics"), None).await;
    let s = samples(&text);
    for (tenant, clients, queries, _, code, failures) in plan {
        let t = format!("tenant=\"{tenant}\"");
        let transactions = (clients * queries + failures) as f64;
        assert_eq!(
            sample(&s, &format!("pgtenant_tenant_queries_total{{{t}}}")),
            transactions,
            "{tenant}"
        );
        assert_eq!(
            sample(&s, &format!("pgtenant_tenant_transactions_total{{{t}}}")),
            transactions,
            "{tenant}"
        );
        assert_eq!(
            sample(
                &s,
                &format!("pgtenant_tenant_errors_total{{{t},sqlstate=\"{code}\"}}")
            ),
            failures as f64,
            "{tenant}"
        );
        let errors: Vec<_> = s
            .keys()
            .filter(|k| k.starts_with(&format!("pgtenant_tenant_errors_total{{{t}")))
            .collect();
        assert_eq!(errors.len(), 1, "{tenant}: {errors:?}");
        let waits = sample(
            &s,
            &format!("pgtenant_tenant_checkout_wait_seconds_count{{{t}}}"),
        );
        assert_eq!(waits - waits_before(tenant), transactions, "{tenant}");
        assert_eq!(
            sample(
                &s,
                &format!("pgtenant_tenant_checkout_wait_seconds_bucket{{le=\"+Inf\",{t}}}")
            ),
            waits,
            "{tenant}"
        );
        assert_eq!(
            sample(
                &s,
                &format!("pgtenant_tenant_transaction_seconds_count{{{t}}}")
            ),
            transactions,
            "{tenant}"
        );
    }
    assert_eq!(
        sample(&s, "pgtenant_refusals_total{sqlstate=\"3D000\"}"),
        2.0
    );
}

/// Tenants that come and go do not make the proxy's memory grow: beyond
/// admin.metrics_max_tenants, those with no client and no pool left are retired
/// into tenant="_other", whose counts keep what they did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_that_left_are_retired_and_their_counts_kept() {
    const MAX: usize = 4;
    let env = EnvBuilder::erp()
        .registry_extra(
            "[tenants.\"*\"]\nhost = \"pg-a\"\ndatabase = \"erp\"\nsearch_path = [\"public\"]\nbackend_user = \"app\"\n",
        )
        .settings(&format!(
            "{HTTP}metrics_max_tenants = {MAX}\n[proxy]\npool_mode = \"transaction\"\npark_after = \"0s\"\n[pool]\nidle_timeout = \"1s\"\n"
        ))
        .start()
        .await;
    let base = format!("http://{}", env.server().http_addr().unwrap());
    let scrape = || async {
        let (_, text) = get(&format!("{base}/metrics"), None).await;
        samples(&text)
    };
    let mut served = 0;
    for wave in 0..3 {
        for i in 0..8 {
            let c = env.connect("app", &format!("w{wave}_{i}")).await;
            c.simple_query("SELECT 1").await.unwrap();
            served += 1;
        }
        // Once their clients and pools are gone, at most MAX are tracked again.
        let bounded = eventually(Duration::from_secs(20), || async {
            let s = scrape().await;
            (sample(&s, "pgtenant_tenants_tracked") <= MAX as f64).then_some(s)
        })
        .await
        .unwrap_or_else(|| panic!("wave {wave}: more than {MAX} tenants stay tracked"));
        let transactions: f64 = bounded
            .iter()
            .filter(|(k, _)| k.starts_with("pgtenant_tenant_transactions_total{"))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(transactions, served as f64, "wave {wave}: counts kept");
        assert!(sample(&bounded, "pgtenant_tenants_retired_total") >= (served - MAX) as f64);
    }
}
