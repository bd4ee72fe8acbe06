//! Auth passthrough's verifier cache: role verifiers fetched from the tenant's server
//! (`backend::fetch_verifier`), kept for `passthrough.cache_ttl` so a changed
//! password takes effect within that time.

use std::time::Instant;

use dashmap::DashMap;

use super::refusal::Refusal;
use crate::app::App;
use crate::auth::Verifier;
use crate::backend::{fetch_verifier, BackendTarget};
use crate::protocol::sqlstate;
use crate::registry::{Host, Tenant};

#[derive(Default)]
pub struct VerifierCache {
    /// By (host address, role): when fetched, and the verifier (`None`: no such role,
    /// or no usable password).
    entries: DashMap<(String, String), (Instant, Option<Verifier>)>,
}

impl VerifierCache {
    /// The verifier of `role` on the tenant's host, from the cache while fresh.
    pub async fn get(
        &self,
        app: &App,
        tenant: &Tenant,
        host: &Host,
        role: &str,
    ) -> Result<Option<Verifier>, Refusal> {
        let key = (host.address.clone(), role.to_string());
        let ttl = app.settings.passthrough.cache_ttl;
        if let Some(entry) = self.entries.get(&key) {
            if entry.0.elapsed() < ttl {
                return Ok(entry.1.clone());
            }
        }
        let Some(auth_user) = &host.auth_user else {
            return Err(Refusal::new(
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                format!(
                    "tenant \"{}\": host {} has no auth_user for auth passthrough",
                    tenant.name, host.name
                ),
            ));
        };
        let target = BackendTarget {
            address: host.address.clone(),
            database: tenant.database.clone(),
            user: auth_user.clone(),
            password: host.auth_password.clone(),
            search_path: Vec::new(),
            tls: host.tls.clone(),
            keys: None,
        };
        let fetched = fetch_verifier(
            &target,
            &app.settings.passthrough.auth_query,
            role,
            app.settings.pool.connect_timeout,
            app.settings.proxy.max_message_size,
        )
        .await
        .map_err(|e| {
            tracing::warn!(tenant = %tenant.name, host = %host.name, error = %e, "auth query failed");
            Refusal::new(
                sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                format!(
                    "tenant \"{}\": cannot check the password with host {}",
                    tenant.name, host.name
                ),
            )
        })?;
        let verifier = match fetched.as_deref().map(str::parse::<Verifier>) {
            Some(Ok(verifier @ Verifier::Scram(_))) => Some(verifier),
            Some(Ok(Verifier::Md5(_))) => {
                tracing::warn!(%role, host = %host.name, "role has an md5 password; auth passthrough needs SCRAM-SHA-256");
                None
            }
            Some(Err(_)) | None => None,
        };
        self.entries.insert(key, (Instant::now(), verifier.clone()));
        Ok(verifier)
    }
}
