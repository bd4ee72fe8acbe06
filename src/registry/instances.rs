//! Instances of the proxy that share one registry database. Each registers in
//! `pgtenant.instances` (id, the address its listener is reached at, a heartbeat) and
//! holds a slot, 1..2047, that the cancel keys it hands out carry in their high bits.
//! A CancelRequest whose slot is another instance's is sent on, as it came, to that
//! instance's listener, which checks the key as for any client: forwarding adds no
//! authority (whoever can reach one instance can reach the other through the load
//! balancer), and an instance never forwards a key of its own slot, so nothing loops.
//!
//! Every heartbeat an instance refreshes its row, removes rows whose heartbeat is
//! older than `STALE_AFTER` heartbeats, and reads the others' addresses. While the
//! registry database is unreachable the last list serves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_postgres::Client;

use super::migrate;
use super::rows::error_text;

/// Bits of a cancel key's process id below the slot.
pub const SLOT_SHIFT: u32 = 20;
pub const MAX_SLOT: i32 = 2047;
/// A row whose heartbeat is this many intervals old belongs to a stopped instance.
pub const STALE_AFTER: u32 = 5;

pub struct Instances {
    pub id: String,
    pub slot: u16,
    pub address: String,
    url: String,
    peers: ArcSwap<HashMap<u16, String>>,
    left: AtomicBool,
}

impl Instances {
    /// The instance's slot from a cancel key's process id.
    pub fn slot_of(pid: i32) -> u16 {
        ((pid >> SLOT_SHIFT) & MAX_SLOT) as u16
    }

    /// The listener address of the instance holding `slot`, if it is live.
    pub fn address_of(&self, slot: u16) -> Option<String> {
        self.peers.load().get(&slot).cloned()
    }

    pub fn live(&self) -> usize {
        self.peers.load().len()
    }

    /// Registers this instance: a free slot, its address, a first heartbeat.
    pub async fn register(
        url: &str,
        address: &str,
        heartbeat: Duration,
    ) -> Result<Arc<Instances>, String> {
        let client = migrate::connect(url).await.map_err(|e| error_text(&e))?;
        expire(&client, heartbeat)
            .await
            .map_err(|e| error_text(&e))?;
        let id = format!(
            "{}-{}-{:08x}",
            hostname(),
            std::process::id(),
            rand::random::<u32>()
        );
        // Two instances starting at once may pick one slot: the unique index refuses
        // the second, which tries again.
        let mut attempts = 0;
        let slot: i32 = loop {
            let row = client
                .query_opt(
                    "INSERT INTO pgtenant.instances (id, address, slot) \
                     SELECT $1, $2, s FROM generate_series(1, $3::int) s \
                     WHERE s NOT IN (SELECT slot FROM pgtenant.instances WHERE slot IS NOT NULL) \
                     ORDER BY random() LIMIT 1 RETURNING slot",
                    &[&id, &address, &MAX_SLOT],
                )
                .await;
            match row {
                Ok(Some(row)) => break row.get(0),
                Ok(None) => return Err("every instance slot is taken".into()),
                Err(e) if attempts < 5 && e.code().is_some_and(|c| c.code() == "23505") => {
                    attempts += 1;
                }
                Err(e) => return Err(error_text(&e)),
            }
        };
        let instances = Arc::new(Instances {
            id,
            slot: slot as u16,
            address: address.to_string(),
            url: url.to_string(),
            peers: ArcSwap::default(),
            left: AtomicBool::new(false),
        });
        instances
            .refresh(&client)
            .await
            .map_err(|e| error_text(&e))?;
        tracing::info!(
            id = %instances.id,
            slot,
            address,
            live = instances.live(),
            "instance registered in the registry database"
        );
        Ok(instances)
    }

    async fn refresh(&self, client: &Client) -> Result<(), tokio_postgres::Error> {
        let rows = client
            .query(
                "SELECT slot, address FROM pgtenant.instances WHERE slot IS NOT NULL",
                &[],
            )
            .await?;
        let peers = rows
            .iter()
            .map(|r| (r.get::<_, i32>(0) as u16, r.get::<_, String>(1)))
            .collect();
        self.peers.store(Arc::new(peers));
        Ok(())
    }

    /// Heartbeats until the runtime stops; a row that expired during an outage is
    /// written again with the same slot.
    pub fn keep_alive(self: Arc<Self>, url: String, heartbeat: Duration) {
        tokio::spawn(async move {
            let mut client: Option<Client> = None;
            let mut reachable = true;
            let mut ticker = tokio::time::interval(heartbeat);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if self.left.load(Ordering::Acquire) {
                    return;
                }
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = migrate::connect(&url).await.ok();
                }
                let Some(c) = &client else {
                    if reachable {
                        tracing::warn!("instance heartbeat: registry database unreachable");
                        reachable = false;
                    }
                    continue;
                };
                match self.beat(c, heartbeat).await {
                    Ok(()) if !reachable => {
                        tracing::info!("instance heartbeat: registry database reachable again");
                        reachable = true;
                    }
                    Ok(()) => {}
                    Err(e) => {
                        if reachable {
                            tracing::warn!("instance heartbeat failed: {}", error_text(&e));
                            reachable = false;
                        }
                        client = None;
                    }
                }
            }
        });
    }

    /// Removes this instance's row at a clean stop, so the others stop counting it
    /// at once (a crashed instance's row expires instead).
    pub async fn leave(&self) {
        self.left.store(true, Ordering::Release);
        let remove = async {
            let client = migrate::connect(&self.url).await?;
            client
                .execute("DELETE FROM pgtenant.instances WHERE id = $1", &[&self.id])
                .await
        };
        if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(2), remove).await {
            tracing::debug!("cannot remove the instance row: {}", error_text(&e));
        }
    }

    async fn beat(
        &self,
        client: &Client,
        heartbeat: Duration,
    ) -> Result<(), tokio_postgres::Error> {
        let slot = self.slot as i32;
        client
            .execute(
                "INSERT INTO pgtenant.instances (id, address, slot) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET heartbeat = now(), address = excluded.address",
                &[&self.id, &self.address, &slot],
            )
            .await?;
        expire(client, heartbeat).await?;
        self.refresh(client).await
    }
}

async fn expire(client: &Client, heartbeat: Duration) -> Result<u64, tokio_postgres::Error> {
    let stale = (heartbeat * STALE_AFTER).as_secs_f64();
    client
        .execute(
            "DELETE FROM pgtenant.instances WHERE heartbeat < now() - make_interval(secs => $1)",
            &[&stale],
        )
        .await
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "pgtenant".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_rides_in_the_high_bits() {
        for slot in [1u16, 7, 2047] {
            let pid = ((slot as i32) << SLOT_SHIFT) | 0xfffff;
            assert!(pid > 0);
            assert_eq!(Instances::slot_of(pid), slot);
        }
    }
}
