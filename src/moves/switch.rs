//! Switching a tenant's host where the registry lives, through the registry store
//! (`registry::store`): the file is rewritten atomically and reloaded here at once;
//! a PostgreSQL registry tells every instance (LISTEN/NOTIFY), this one included.
//! The switch counts once this instance's snapshot names the new host.

use std::time::{Duration, Instant};

use crate::app::App;
use crate::registry::store::Store;
use crate::registry::{file, HostName, TenantName};
use crate::secret::Secrets;

/// How long a PostgreSQL registry's change may take to reach this instance.
const ARRIVAL: Duration = Duration::from_secs(10);

/// Points `tenant` at `to` in the registry and waits until this instance serves
/// that registry. On failure the registry is put back as it was when possible.
pub async fn switch(
    app: &App,
    tenant: &TenantName,
    from: &str,
    to: &HostName,
) -> Result<(), String> {
    let store = Store::open(&app.settings).map_err(|e| e.to_string())?;
    store
        .set_tenant_host(tenant.as_str(), to.as_str())
        .await
        .map_err(|e| format!("switching the registry: {e}"))?;
    if let Some(path) = &app.settings.registry.file {
        let secrets = Secrets::from_settings(&app.settings.secrets).map_err(|e| e.to_string())?;
        file::reload(&app.registry, path, &secrets);
    }
    let deadline = Instant::now() + ARRIVAL;
    while !serves_from(app, tenant, to) {
        if Instant::now() >= deadline {
            let undone = store.set_tenant_host(tenant.as_str(), from).await;
            return Err(format!(
                "the switched registry did not reach this instance within {ARRIVAL:?}; {}",
                match undone {
                    Ok(_) => format!("the registry names {from} again"),
                    Err(e) => format!("and putting {from} back failed: {e}"),
                }
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

fn serves_from(app: &App, tenant: &TenantName, host: &HostName) -> bool {
    app.registry
        .snapshot()
        .tenant(tenant.as_str())
        .is_some_and(|t| &t.host == host)
}
