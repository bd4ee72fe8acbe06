//! Several instances on one registry database move a tenant together, through the
//! registry database: the instance that runs the move asks the others to pause the
//! tenant (NOTIFY on `pgtenant_moves`); each pauses it, waits until it is drained,
//! and acknowledges on the same channel. The switch happens only once every live
//! instance (`pgtenant.instances`) has acknowledged; one that does not in time fails
//! the move, and everyone resumes on the source. After the switch the others resume
//! once their registry shows the new host, so none sends a transaction to the old one.
//!
//! An instance that paused for a move and hears nothing more resumes by itself after
//! `admin.move_timeout` plus `ORPHAN_GRACE` (the instance running the move is gone).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::app::App;
use crate::registry::{HostName, TenantName};

pub const CHANNEL: &str = "pgtenant_moves";
/// After the drain itself: how long the others have to acknowledge.
const ACK_GRACE: Duration = Duration::from_secs(5);
const ORPHAN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Message {
    /// Pause `tenant` and acknowledge once drained.
    Pause {
        tenant: String,
        #[serde(rename = "move")]
        id: String,
        from: String,
        to: String,
    },
    /// An instance paused the tenant (`ok`), or could not (`error`).
    Ack {
        tenant: String,
        #[serde(rename = "move")]
        id: String,
        instance: String,
        error: Option<String>,
    },
    /// Resume `tenant` once this instance's registry names `host`.
    Resume {
        tenant: String,
        #[serde(rename = "move")]
        id: String,
        host: String,
    },
}

/// The instance id, when this instance shares a registry database with others.
pub fn instance_id(app: &App) -> Option<String> {
    app.settings.registry.url.as_ref()?;
    app.cancels.instances().map(|i| i.id.clone())
}

/// A connection that hands its notifications to a channel.
async fn listen(url: &str) -> Result<(Client, mpsc::UnboundedReceiver<Message>), String> {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = message {
                match serde_json::from_str::<Message>(n.payload()) {
                    Ok(m) => {
                        if tx.send(m).is_err() {
                            break;
                        }
                    }
                    Err(e) => tracing::debug!("ignoring a move message: {e}"),
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(|e| e.to_string())?;
    Ok((client, rx))
}

async fn send(client: &Client, message: &Message) -> Result<(), String> {
    let payload = serde_json::to_string(message).expect("serializable");
    client
        .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The coordinating side of one move.
pub struct Coordinator {
    client: Client,
    acks: mpsc::UnboundedReceiver<Message>,
    me: String,
    pub id: String,
    tenant: String,
    /// Whether the others were asked to pause (and so must be told to resume).
    asked: bool,
}

impl Coordinator {
    pub async fn open(url: &str, me: String, tenant: &str) -> Result<Coordinator, String> {
        let (client, acks) = listen(url).await?;
        Ok(Coordinator {
            client,
            acks,
            me,
            id: format!("{:016x}", rand::random::<u64>()),
            tenant: tenant.into(),
            asked: false,
        })
    }

    /// Asks every other live instance to pause and waits for each to acknowledge.
    pub async fn pause_others(
        &mut self,
        from: &str,
        to: &str,
        drain: Duration,
    ) -> Result<usize, String> {
        let peers: Vec<String> = self
            .client
            .query(
                "SELECT id FROM pgtenant.instances WHERE id <> $1",
                &[&self.me],
            )
            .await
            .map_err(|e| format!("reading the instances: {e}"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if peers.is_empty() {
            return Ok(0);
        }
        self.asked = true;
        send(
            &self.client,
            &Message::Pause {
                tenant: self.tenant.clone(),
                id: self.id.clone(),
                from: from.into(),
                to: to.into(),
            },
        )
        .await?;
        let deadline = Instant::now() + drain + ACK_GRACE;
        let mut waiting: Vec<String> = peers.clone();
        while !waiting.is_empty() {
            let message = tokio::time::timeout_at(deadline.into(), self.acks.recv()).await;
            match message {
                Ok(Some(Message::Ack {
                    id,
                    instance,
                    error,
                    ..
                })) if id == self.id => {
                    if let Some(error) = error {
                        return Err(format!(
                            "instance {instance} could not pause the tenant: {error}"
                        ));
                    }
                    waiting.retain(|p| p != &instance);
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err("lost the registry database connection".into()),
                Err(_) => {
                    return Err(format!(
                        "instance(s) {} did not acknowledge the pause within {:?}",
                        waiting.join(", "),
                        drain + ACK_GRACE
                    ))
                }
            }
        }
        Ok(peers.len())
    }

    /// Tells the others to resume, on `host`.
    pub async fn resume_others(&mut self, host: &str) {
        if !self.asked {
            return;
        }
        let message = Message::Resume {
            tenant: self.tenant.clone(),
            id: self.id.clone(),
            host: host.into(),
        };
        if let Err(e) = send(&self.client, &message).await {
            tracing::warn!(tenant = %self.tenant, "cannot tell the other instances to resume: {e}; they resume by themselves after move_timeout");
        }
    }
}

/// Follows the moves other instances run, for as long as the proxy runs.
pub fn follow(app: Weak<App>, url: String, me: String) {
    tokio::spawn(async move {
        let paused: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        loop {
            match listen(&url).await {
                Ok((client, mut rx)) => {
                    let client = Arc::new(client);
                    while let Some(message) = rx.recv().await {
                        let Some(app) = app.upgrade() else { return };
                        handle(app, client.clone(), &me, message, paused.clone());
                    }
                }
                Err(e) => tracing::debug!("moves: registry database unreachable: {e}"),
            }
            if app.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

fn handle(
    app: Arc<App>,
    client: Arc<Client>,
    me: &str,
    message: Message,
    paused: Arc<Mutex<HashMap<String, String>>>,
) {
    match message {
        Message::Pause { tenant, id, to, .. } => {
            let me = me.to_string();
            paused.lock().unwrap().insert(tenant.clone(), id.clone());
            tokio::spawn(async move {
                let name = TenantName::new(&tenant);
                let (_never, abort) = tokio::sync::watch::channel(false);
                let drained = super::drain::pause_and_drain(&app, &name, &to, abort).await;
                tracing::info!(%tenant, ok = drained.is_ok(), "move: paused for another instance");
                let ack = Message::Ack {
                    tenant: tenant.clone(),
                    id: id.clone(),
                    instance: me,
                    error: drained.err(),
                };
                if let Err(e) = send(&client, &ack).await {
                    tracing::warn!(%tenant, "cannot acknowledge the pause: {e}");
                }
                // The instance running the move may be gone: do not stay paused.
                tokio::time::sleep(app.settings.admin.move_timeout + ORPHAN_GRACE).await;
                let orphaned = paused.lock().unwrap().get(&tenant) == Some(&id);
                if orphaned {
                    paused.lock().unwrap().remove(&tenant);
                    tracing::warn!(%tenant, "move: no word from the instance running the move; resuming");
                    app.pools.resume(&name);
                }
            });
        }
        Message::Resume { tenant, id, host } => {
            if paused.lock().unwrap().get(&tenant) != Some(&id) {
                return;
            }
            paused.lock().unwrap().remove(&tenant);
            tokio::spawn(async move {
                let name = TenantName::new(&tenant);
                let host = HostName::new(&host);
                // The switch reaches this instance through the registry: resume
                // only once it has (or give up waiting and resume anyway).
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let snapshot = app.registry.snapshot();
                    let tenant_now = snapshot.tenant(name.as_str());
                    if let (Some(t), Some(h)) = (&tenant_now, snapshot.host(&host)) {
                        if t.host == host {
                            app.pools.repoint(t, &h);
                            break;
                        }
                    }
                    if Instant::now() >= deadline {
                        tracing::warn!(tenant = %name, %host, "move: the registry did not show the new host in time; resuming anyway");
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                app.pools.resume(&name);
            });
        }
        Message::Ack { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_json() {
        let m = Message::Resume {
            tenant: "acme".into(),
            id: "1".into(),
            host: "pg-b".into(),
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(
            text,
            r#"{"action":"resume","tenant":"acme","move":"1","host":"pg-b"}"#
        );
        assert_eq!(serde_json::from_str::<Message>(&text).unwrap(), m);
    }
}
