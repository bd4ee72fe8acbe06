//! The command line: `check` names each problem with its file and key, `serve`
//! re-reads the registry on SIGHUP, and `demo` serves its sample tenants and cleans
//! up on Ctrl-C.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn pgtenant() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pgtenant"))
}

#[test]
fn check_names_file_and_key_of_each_problem() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("tenants.toml");
    std::fs::write(
        &registry,
        "[hosts.a]\naddress = \"127.0.0.1:5432\"\n[tenants.acme]\nhost = \"nowhere\"\ndatabase = \"erp\"\n",
    )
    .unwrap();
    let config = dir.path().join("pgtenant.toml");
    std::fs::write(
        &config,
        format!("[registry]\nfile = {:?}\n", registry.display().to_string()),
    )
    .unwrap();

    let out = pgtenant()
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("tenants.toml: tenants.\"acme\".host: unknown host \"nowhere\""),
        "{stderr}"
    );

    // A bad environment override is named by its variable and key.
    let out = pgtenant()
        .args(["check", "--config"])
        .arg(&config)
        .env("PGTENANT__PROXY__LISTEN", "nowhere")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr,
        "PGTENANT__PROXY__LISTEN: proxy.listen: \"nowhere\" is not an IP address and port\n"
    );

    std::fs::write(
        &registry,
        "[hosts.a]\naddress = \"127.0.0.1:5432\"\n[tenants.acme]\nhost = \"a\"\ndatabase = \"erp\"\n",
    )
    .unwrap();
    let out = pgtenant()
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 tenants, 1 hosts"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_rereads_the_registry_on_sighup() {
    let env = EnvBuilder::erp().start().await;
    let port: u16 = closed_port_address()
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    let config = env.dir.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\n[registry]\nfile = {:?}\nwatch_interval = \"1h\"\n",
            env.registry_path.display().to_string()
        ),
    )
    .unwrap();
    let mut child = pgtenant()
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let up = eventually(Duration::from_secs(10), || async {
        connect(&config_for(addr, "app", Some("acme"))).await.ok()
    })
    .await;
    assert!(up.is_some(), "pgtenant serve did not come up");

    // Only a SIGHUP can make it notice: the file is polled once an hour.
    env.write_registry(&format!(
        "{ERP_REGISTRY}\n[tenants.newco]\nhost = \"pg-a\"\ndatabase = \"erp\"\nsearch_path = [\"tenant_globex\"]\nbackend_user = \"app\"\n"
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = connect(&config_for(addr, "app", Some("newco"))).await;
    assert!(before.is_err(), "newco was served before SIGHUP");
    unsafe_free_kill(child.id(), "HUP");
    let served = eventually(Duration::from_secs(5), || async {
        connect(&config_for(addr, "app", Some("newco"))).await.ok()
    })
    .await
    .expect("newco served after SIGHUP");
    assert_eq!(items(&served).await, GLOBEX_ITEMS);

    unsafe_free_kill(child.id(), "TERM");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "serve exits cleanly on SIGTERM: {status}");
}

/// Sends a signal with kill(1), keeping the test free of unsafe code.
fn unsafe_free_kill(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_its_tenants_and_cleans_up() {
    let port: u16 = closed_port_address()
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    let mut child = pgtenant()
        .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Read what it prints until it says it is serving, remembering its temp dir.
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.contains("stops the proxy and both clusters");
            seen.push(line);
            if done {
                break;
            }
        }
        seen
    });
    let lines = tokio::time::timeout(Duration::from_secs(60), lines)
        .await
        .expect("demo came up within a minute")
        .unwrap();
    let dir = lines
        .iter()
        .find_map(|l| l.strip_prefix("starting two PostgreSQL clusters in "))
        .map(|rest| rest.trim_end_matches(" ...").to_string())
        .expect("demo names its temp dir");
    assert!(std::path::Path::new(&dir).exists());

    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let acme = connect(&config_for(addr, "demo", Some("acme")))
        .await
        .unwrap();
    assert_eq!(value(&acme, "SHOW search_path").await, "tenant_acme");
    assert_eq!(
        column(&acme, "SELECT name FROM items ORDER BY id")
            .await
            .len(),
        2
    );
    let initech = connect(&config_for(addr, "demo", Some("initech")))
        .await
        .unwrap();
    assert_eq!(
        value(&initech, "SELECT current_database()").await,
        "initech"
    );
    let globex = connect(&config_for(addr, "demo.globex", Some("postgres")))
        .await
        .unwrap();
    assert_eq!(column(&globex, "SELECT name FROM items").await.len(), 3);
    drop((acme, initech, globex));

    // SIGTERM, as `docker stop` sends; Ctrl-C (SIGINT) takes the same path.
    unsafe_free_kill(child.id(), "TERM");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "demo exits cleanly on SIGTERM: {status}");
    assert!(
        !std::path::Path::new(&dir).exists(),
        "demo left {dir} behind"
    );
}
