//! What `pgtenant serve` writes to standard output: one JSON object per line with
//! `PGTENANT_LOG_FORMAT=json`, no colour codes when standard output is not a
//! terminal, and connect, pin, disconnect and refusal lines that name the client, its
//! tenant, user and peer; a refusal because a host is unreachable names the address
//! and what the system said (connection refused, or no answer in time).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A registry with the erp tenants and two unreachable ones: `down` on a port where
/// nothing listens, `mute` on a listener that accepts and never answers.
fn registry(closed: &str, mute: &str) -> String {
    format!(
        r#"{ERP_REGISTRY}
[hosts.pg-down]
address = "{closed}"
[hosts.pg-mute]
address = "{mute}"
[tenants.down]
host = "pg-down"
database = "erp"
backend_user = "app"
[tenants.mute]
host = "pg-mute"
database = "erp"
backend_user = "app"
"#
    )
}

/// Runs `pgtenant serve` with `env` on the test's registry, lets `exercise` talk to
/// it, stops it with SIGTERM and returns what it wrote to standard output.
async fn serve_and_capture<F, Fut>(env: &Env, vars: &[(&str, &str)], exercise: F) -> String
where
    F: FnOnce(std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let listen = closed_port_address();
    let config = env.dir.path().join("serve-logs.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = \"{listen}\"\npool_mode = \"transaction\"\nshutdown_timeout = \"1s\"\n[pool]\nconnect_timeout = \"500ms\"\n[registry]\nfile = {:?}\n",
            env.registry_path.display().to_string()
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_pgtenant"));
    command
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("PGTENANT_LOG_FORMAT")
        .env_remove("PGTENANT_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in vars {
        command.env(k, v);
    }
    let child = command.spawn().unwrap();
    let addr = listen.parse().unwrap();
    let up = eventually(Duration::from_secs(15), || async {
        connect(&config_for(addr, "app", Some("globex"))).await.ok()
    })
    .await;
    assert!(up.is_some(), "pgtenant serve did not come up");
    drop(up);
    exercise(addr).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "serve exits cleanly: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("logs are UTF-8")
}

/// A client that connects, pins itself (LISTEN), leaves; then refusals of each kind.
async fn exercise(addr: std::net::SocketAddr) {
    let acme = connect(&config_for(addr, "app", Some("acme")))
        .await
        .unwrap();
    assert_eq!(items(&acme).await, ACME_ITEMS);
    acme.batch_execute("LISTEN pinned_here").await.unwrap();
    drop(acme);
    for tenant in ["down", "mute"] {
        let err = connect(&config_for(addr, "app", Some(tenant)))
            .await
            .map(|_| ())
            .expect_err("an unreachable host");
        assert_eq!(err.code().map(|c| c.code()), Some("08001"), "{err}");
    }
    let err = connect(&config_for(addr, "app", Some("nosuch")))
        .await
        .map(|_| ())
        .expect_err("an unknown tenant");
    assert_eq!(err.code().map(|c| c.code()), Some("3D000"), "{err}");
    // Disconnections are logged as their sessions end: give them a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// The silent host: accepts connections and never says a word.
fn mute_listener() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_carry_client_tenant_user_and_peer() {
    let mute = mute_listener();
    let closed = closed_port_address();
    let mute_addr = mute.local_addr().unwrap().to_string();
    let env = EnvBuilder::erp()
        .registry(&registry(&closed, &mute_addr))
        .start()
        .await;
    let out = serve_and_capture(&env, &[("PGTENANT_LOG_FORMAT", "json")], exercise).await;
    drop(mute);

    let lines: Vec<Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(lines.len() > 5, "{out}");
    for line in &lines {
        for key in ["timestamp", "level", "target"] {
            assert!(line.get(key).is_some(), "no {key}: {line}");
        }
        assert!(line["fields"]["message"].is_string(), "no message: {line}");
    }
    let find = |message: &str, tenant: &str| -> &Value {
        lines
            .iter()
            .find(|l| {
                l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
                    && l["fields"]["tenant"] == tenant
            })
            .unwrap_or_else(|| panic!("no \"{message}\" line for {tenant}:\n{out}"))
    };
    for (message, tenant) in [
        ("client connected", "acme"),
        ("client pinned to its server connection", "acme"),
        ("client disconnected", "acme"),
        ("refused", "down"),
        ("refused", "mute"),
        ("refused", "nosuch"),
    ] {
        let line = find(message, tenant);
        assert_eq!(line["level"], "INFO", "{line}");
        let fields = &line["fields"];
        assert!(
            fields["client"]
                .as_str()
                .is_some_and(|c| c.starts_with('c')),
            "{line}"
        );
        assert_eq!(fields["user"], "app", "{line}");
        assert!(
            fields["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with("127.0.0.1:")),
            "{line}"
        );
    }
    // Unreachable hosts: the address and what the system said.
    let down = &find("refused", "down")["fields"];
    assert_eq!(down["code"], "08001", "{down}");
    let detail = down["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&closed) && detail.to_lowercase().contains("connection refused"),
        "{down}"
    );
    let mute = &find("refused", "mute")["fields"];
    let detail = mute["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&mute_addr) && detail.contains("no answer") && detail.contains("500ms"),
        "{mute}"
    );
    assert_eq!(find("refused", "nosuch")["fields"]["code"], "3D000");
    assert!(find("client pinned", "acme")["fields"]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("LISTEN")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_lines_have_no_colour_codes_off_a_terminal() {
    let mute = mute_listener();
    let closed = closed_port_address();
    let mute_addr = mute.local_addr().unwrap().to_string();
    let env = EnvBuilder::erp()
        .registry(&registry(&closed, &mute_addr))
        .start()
        .await;
    let out = serve_and_capture(&env, &[], exercise).await;
    drop(mute);
    assert!(!out.contains('\x1b'), "colour codes in:\n{out}");
    let refused = out
        .lines()
        .find(|l| l.contains("refused") && l.contains("tenant=\"down\""))
        .unwrap_or_else(|| panic!("no refusal line for down:\n{out}"));
    assert!(
        refused.contains("user=\"app\"")
            && refused.contains("peer=127.0.0.1:")
            && refused.contains(&closed),
        "{refused}"
    );
    let connected = out
        .lines()
        .find(|l| l.contains("client connected"))
        .unwrap_or_else(|| panic!("no connect line:\n{out}"));
    assert!(connected.contains(" INFO "), "{connected}");
}
