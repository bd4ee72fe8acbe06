//! The status page in a real browser: headless Chromium loads `/`, its script reads
//! /status.json, and the rendered page holds a row per tenant; a screenshot is kept.

mod common;

use std::path::PathBuf;

use common::*;

fn chromium() -> PathBuf {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("headless Chromium is needed for this test (apt-get install chromium)")
}

async fn headless(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1280,800",
            // Lets the page's fetch and rendering finish before the dump.
            "--virtual-time-budget=5000",
        ])
        .args(args)
        .output()
        .await
        .expect("running chromium")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_lists_tenants_in_a_browser() {
    let env = EnvBuilder::erp()
        .settings("[admin]\nhttp_listen = \"127.0.0.1:0\"\n")
        .start()
        .await;
    let acme = env.connect("app", "acme").await;
    for _ in 0..3 {
        items(&acme).await;
    }
    let globex = env.connect("app", "globex").await;
    items(&globex).await;
    let url = format!("http://{}/", env.server().http_addr().unwrap());

    let dom = headless(&["--dump-dom", &url]).await;
    let dom = String::from_utf8_lossy(&dom.stdout);
    let acme_at = dom
        .find("data-tenant=\"acme\"")
        .unwrap_or_else(|| panic!("no row for acme in:\n{dom}"));
    let globex_at = dom
        .find("data-tenant=\"globex\"")
        .unwrap_or_else(|| panic!("no row for globex in:\n{dom}"));
    assert!(acme_at < globex_at, "the busier tenant comes first");
    assert!(dom.contains("pg-a"), "the host row is there");

    let shot = env.dir.path().join("status.png");
    let out = headless(&[&format!("--screenshot={}", shot.display()), &url]).await;
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5_000,
        "{} bytes",
        png.len()
    );
    if let Ok(dir) = std::env::var("PGTENANT_TEST_ARTIFACTS") {
        let _ = std::fs::copy(&shot, PathBuf::from(dir).join("status.png"));
    }
}
