//! Cross-replica cache invalidation: a key change on any replica is published
//! (on Redis pub/sub when `redis` is configured, and with PostgreSQL NOTIFY
//! when the database is PostgreSQL) and every replica reloads its key cache
//! at once.
//! The periodic refresh stays as the safety net.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::App;

/// The channel name (Redis: under the configured prefix).
pub const PG_CHANNEL: &str = "bursar_keys";

fn redis_channel(prefix: &str) -> String {
    format!("{prefix}invalidate")
}

/// Tell the other replicas that keys changed.
pub async fn publish(app: &App) {
    if let Some(url) = app.config.redis.as_deref() {
        let sent = async {
            let client = redis::Client::open(url)?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PUBLISH")
                .arg(redis_channel(&app.config.redis_prefix))
                .arg(app.replica_id.as_str())
                .query_async::<i64>(&mut conn)
                .await
        };
        match tokio::time::timeout(Duration::from_secs(1), sent).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not publish a key change to redis; other replicas refresh within their safety-net interval")
            }
            Err(_) => tracing::warn!("publishing a key change to redis timed out"),
        }
    }
    if app.config.database.starts_with("postgres")
        && let Err(e) = app.store.notify(PG_CHANNEL, &app.replica_id).await
    {
        tracing::warn!(error = %e, "could not NOTIFY a key change");
    }
}

/// Listen for changes made elsewhere and reload the cache (runs forever).
/// With Redis and PostgreSQL both configured, both channels are used, so a
/// change still reaches every replica while Redis is down.
pub async fn listen(app: Arc<App>) {
    let redis = app.config.redis.clone().filter(|r| !r.is_empty());
    let postgres = app.config.database.starts_with("postgres");
    match (redis, postgres) {
        (Some(url), true) => {
            tokio::join!(listen_redis(app.clone(), url), listen_postgres(app));
        }
        (Some(url), false) => listen_redis(app, url).await,
        (None, true) => listen_postgres(app).await,
        (None, false) => {}
    }
}

async fn reload(app: &App, origin: &str) {
    if origin == app.replica_id {
        return;
    }
    if let Err(e) = app.reload_keys().await {
        tracing::warn!(error = %e, "key cache reload after an invalidation failed");
    }
}

async fn listen_redis(app: Arc<App>, url: String) {
    let channel = redis_channel(&app.config.redis_prefix);
    loop {
        let subscribed = async {
            let client = redis::Client::open(url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match subscribed.await {
            Ok(pubsub) => {
                // Changes missed while unsubscribed: reload once.
                reload(&app, "").await;
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = messages.next().await {
                    let origin: String = msg.get_payload().unwrap_or_default();
                    reload(&app, &origin).await;
                }
                tracing::warn!("redis invalidation subscription ended; reconnecting");
            }
            Err(e) => {
                tracing::debug!(error = %e, "redis invalidation subscription failed; retrying")
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn listen_postgres(app: Arc<App>) {
    loop {
        match sqlx::postgres::PgListener::connect(&app.config.database).await {
            Ok(mut l) => {
                if l.listen(PG_CHANNEL).await.is_ok() {
                    reload(&app, "").await;
                    loop {
                        match l.recv().await {
                            Ok(n) => reload(&app, n.payload()).await,
                            Err(e) => {
                                tracing::warn!(error = %e, "postgres invalidation listener failed; reconnecting");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "postgres invalidation listener cannot connect; retrying")
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
