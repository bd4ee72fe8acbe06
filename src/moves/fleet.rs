//! Several instances on one registry database move a tenant together, through the
//! registry database: the instance that runs the move asks the others to pause the
//! tenant (NOTIFY on `pgtenant_moves`); each pauses it, waits until it is drained,
//! records its acknowledgement (or why it could not pause) in `pgtenant.move_acks`
//! and then notifies. The instance running the move decides from that table (a
//! notification only wakes it, and it reads the table every `ACK_POLL` anyway), so
//! an acknowledgement is not lost with a connection. The switch happens only once
//! every live instance (`pgtenant.instances`) has acknowledged; one that does not in
//! time fails the move, and everyone resumes on the source. After the switch the
//! others resume once their registry shows the new host, so none sends a
//! transaction to the old one.
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
/// How often the acknowledgements table is read while waiting, notification or not.
const ACK_POLL: Duration = Duration::from_millis(100);

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
    /// Abort the move of `tenant`, if this instance runs it.
    Abort { tenant: String },
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

/// Records an instance's acknowledgement of move `id` (`error`: why it could not
/// pause), on `client` or, that failing, on a new connection.
async fn record_ack(
    url: &str,
    client: &Client,
    id: &str,
    me: &str,
    error: Option<&str>,
) -> Result<(), String> {
    const SQL: &str = "INSERT INTO pgtenant.move_acks (move_id, instance, error) \
         VALUES ($1, $2, $3) ON CONFLICT (move_id, instance) \
         DO UPDATE SET acked_at = now(), error = excluded.error";
    if client.execute(SQL, &[&id, &me, &error]).await.is_ok() {
        return Ok(());
    }
    let fresh = crate::registry::migrate::connect(url)
        .await
        .map_err(|e| crate::registry::rows::error_text(&e))?;
    fresh
        .execute(SQL, &[&id, &me, &error])
        .await
        .map(|_| ())
        .map_err(|e| crate::registry::rows::error_text(&e))
}

/// The acknowledgements of move `id` recorded so far: instance, and its error.
async fn read_acks(client: &Client, id: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let rows = client
        .query(
            "SELECT instance, error FROM pgtenant.move_acks WHERE move_id = $1",
            &[&id],
        )
        .await
        .map_err(|e| {
            format!(
                "reading pgtenant.move_acks: {}",
                crate::registry::rows::error_text(&e)
            )
        })?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Tells the instances a move paused to resume on its source (after an abort of a
/// move whose instance is gone).
pub async fn tell_resume(app: &App, record: &super::MoveRecord) {
    let Some(url) = &app.settings.registry.url else {
        return;
    };
    let message = Message::Resume {
        tenant: record.tenant.clone(),
        id: record.id.clone(),
        host: record.from.clone(),
    };
    match crate::registry::migrate::connect(url).await {
        Ok(client) => {
            if let Err(e) = send(&client, &message).await {
                tracing::warn!(tenant = %record.tenant, "cannot tell the other instances to resume: {e}");
            }
        }
        Err(e) => {
            tracing::warn!(tenant = %record.tenant, "cannot tell the other instances to resume: {}", crate::registry::rows::error_text(&e))
        }
    }
}

/// Asks the instance running `record`'s move to abort it, and waits until the
/// record says the move ended: its message, or why not.
pub async fn ask_abort(app: &App, record: &super::MoveRecord) -> Result<super::MoveRecord, String> {
    let url = app
        .settings
        .registry
        .url
        .as_ref()
        .ok_or("no registry database")?;
    let client = crate::registry::migrate::connect(url)
        .await
        .map_err(|e| crate::registry::rows::error_text(&e))?;
    let message = Message::Abort {
        tenant: record.tenant.clone(),
    };
    send(&client, &message).await?;
    // The move drops what it made before it records its end.
    let deadline = Instant::now() + app.settings.admin.move_timeout + ORPHAN_GRACE;
    loop {
        let now = app.moves.recorded(&record.tenant).await?;
        match now {
            Some(f) if f.record.id == record.id && f.record.finished => return Ok(f.record),
            Some(f) if f.record.id == record.id && !f.owner_alive => {
                return Err(format!(
                    "instance {} stopped before the move ended; abort again to clean up",
                    record.instance.as_deref().unwrap_or("?")
                ))
            }
            Some(f) if f.record.id == record.id => {}
            _ => return Err("the move's record changed meanwhile".into()),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "instance {} did not end the move within {:?}",
                record.instance.as_deref().unwrap_or("?"),
                app.settings.admin.move_timeout + ORPHAN_GRACE
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The coordinating side of one move.
pub struct Coordinator {
    url: String,
    client: Client,
    acks: mpsc::UnboundedReceiver<Message>,
    me: String,
    pub id: String,
    tenant: String,
    /// Whether the others were asked to pause (and so must be told to resume).
    asked: bool,
}

impl Coordinator {
    /// For move `id` (the move record's).
    pub async fn open(
        url: &str,
        me: String,
        tenant: &str,
        id: &str,
    ) -> Result<Coordinator, String> {
        let (client, acks) = listen(url).await?;
        // Acknowledgements of long-gone moves are of no use.
        let _ = client
            .execute(
                "DELETE FROM pgtenant.move_acks WHERE acked_at < now() - interval '7 days'",
                &[],
            )
            .await;
        Ok(Coordinator {
            url: url.into(),
            client,
            acks,
            me,
            id: id.into(),
            tenant: tenant.into(),
            asked: false,
        })
    }

    /// The acknowledgements so far, on a new connection if the listening one is gone.
    async fn acks_now(&mut self) -> Result<Vec<(String, Option<String>)>, String> {
        if self.client.is_closed() {
            let (client, acks) = listen(&self.url).await?;
            (self.client, self.acks) = (client, acks);
        }
        read_acks(&self.client, &self.id).await
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
        loop {
            let acks = self.acks_now().await?;
            if let Some((instance, Some(error))) =
                acks.iter().find(|(i, e)| e.is_some() && peers.contains(i))
            {
                return Err(format!(
                    "instance {instance} could not pause the tenant: {error}"
                ));
            }
            let waiting: Vec<&String> = peers
                .iter()
                .filter(|p| !acks.iter().any(|(i, _)| i == *p))
                .collect();
            if waiting.is_empty() {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                let names: Vec<&str> = waiting.iter().map(|w| w.as_str()).collect();
                return Err(format!(
                    "instance(s) {} did not acknowledge the pause within {:?}",
                    names.join(", "),
                    drain + ACK_GRACE
                ));
            }
            // A notification wakes this early; the table decides.
            let wait = ACK_POLL.min(deadline - now);
            if let Ok(None) = tokio::time::timeout(wait, self.acks.recv()).await {
                // The listening connection is gone: read the table on a new one.
                tokio::time::sleep(wait).await;
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
                        handle(app, client.clone(), &url, &me, message, paused.clone());
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
    url: &str,
    me: &str,
    message: Message,
    paused: Arc<Mutex<HashMap<String, String>>>,
) {
    match message {
        // This instance's own move pauses the tenant itself.
        Message::Pause { tenant, .. } if app.moves.running(&tenant).is_some() => {}
        Message::Pause { tenant, id, to, .. } => {
            let (me, url) = (me.to_string(), url.to_string());
            paused.lock().unwrap().insert(tenant.clone(), id.clone());
            tokio::spawn(async move {
                let name = TenantName::new(&tenant);
                let (_never, abort) = tokio::sync::watch::channel(false);
                let drained = super::drain::pause_and_drain(&app, &name, &to, abort).await;
                tracing::info!(%tenant, ok = drained.is_ok(), "move: paused for another instance");
                let error = drained.err();
                // In the table first: the mover decides from it.
                if let Err(e) = record_ack(&url, &client, &id, &me, error.as_deref()).await {
                    tracing::warn!(%tenant, "cannot record the pause's acknowledgement: {e}");
                }
                let ack = Message::Ack {
                    tenant: tenant.clone(),
                    id: id.clone(),
                    instance: me,
                    error,
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
                super::engine::warm(&app, &name).await;
                app.pools.resume(&name);
            });
        }
        Message::Abort { tenant } => {
            if let Some(running) = app.moves.running(&tenant) {
                tracing::info!(%tenant, "move: aborted at another instance's request");
                running.abort.send_replace(true);
            }
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
