//! A token cache, read lock-free (arc-swap), refreshed by one request at a time (single
//! flight), ahead of expiry; a failing endpoint does not stop a still-valid cached token
//! from being used, and failures are shared with every caller until the next try.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::classify::Verdict;
use super::endpoint::{AccessToken, TokenError};

/// After a failed refresh, wait this long before trying again...
const RETRY_FLOOR: Duration = Duration::from_secs(2);
/// ... doubling up to this.
const RETRY_CEILING: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Pacing {
    not_before: Option<Instant>,
    delay: Duration,
    /// The last failure, answered to every caller until `not_before` (one request per
    /// backoff step, however many mailboxes ask: Entra punishes loops, AADSTS50196).
    last_error: Option<TokenError>,
}

/// One cached token and its refresh discipline.
#[derive(Default)]
pub struct TokenCache {
    current: ArcSwapOption<AccessToken>,
    /// Single flight: held while a token request is in flight; also guards the pacing.
    refresh: Mutex<Pacing>,
}

impl TokenCache {
    /// A token valid now: the cached one, or `fetch()`'s when it is due for refresh.
    pub async fn get<F, Fut>(&self, label: &str, fetch: F) -> Result<Arc<AccessToken>, TokenError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<AccessToken, TokenError>>,
    {
        if let Some(t) = self.current.load_full()
            && Instant::now() < t.refresh_at
        {
            return Ok(t);
        }
        let mut pacing = match self.refresh.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                // A refresh is in flight: a token still valid now serves this caller at once
                // instead of waiting (up to the request timeout) for the new one.
                if let Some(t) = self.current.load_full()
                    && Instant::now() < t.expires_at
                {
                    return Ok(t);
                }
                self.refresh.lock().await
            }
        };
        let cached = self.current.load_full();
        let now = Instant::now();
        if let Some(t) = &cached {
            if now < t.refresh_at {
                return Ok(t.clone()); // someone else refreshed while we waited
            }
            let transient = pacing
                .last_error
                .as_ref()
                .is_some_and(|e| e.verdict == Verdict::Transient);
            if transient && now < t.expires_at && pacing.not_before.is_some_and(|nb| now < nb) {
                return Ok(t.clone()); // endpoint failing: keep using the valid token
            }
        }
        if let (Some(not_before), Some(err)) = (pacing.not_before, &pacing.last_error)
            && now < not_before
        {
            return Err(err.clone());
        }
        match fetch().await {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                self.current.store(Some(fresh.clone()));
                *pacing = Pacing::default();
                Ok(fresh)
            }
            Err(err) => {
                pacing.delay = (pacing.delay * 2).clamp(RETRY_FLOOR, RETRY_CEILING);
                pacing.not_before = Some(Instant::now() + pacing.delay);
                pacing.last_error = Some(err.clone());
                if err.verdict != Verdict::Transient {
                    // The grant or credential is dead: its tokens are not used any more.
                    self.current.store(None);
                }
                match cached {
                    Some(t) if Instant::now() < t.expires_at && err.verdict == Verdict::Transient => {
                        tracing::warn!(token = label, error = %err, "Token refresh failed; using the cached token until it expires.");
                        Ok(t)
                    }
                    _ => Err(err),
                }
            }
        }
    }

    /// Drops the cached token if it is still `stale`.
    pub fn invalidate(&self, stale: &Arc<AccessToken>) {
        self.current.rcu(|c| {
            if c.as_ref().is_some_and(|c| Arc::ptr_eq(c, stale)) {
                None
            } else {
                c.clone()
            }
        });
    }

    /// Forgets the pacing (new consent, new secret): the next `get` asks at once.
    pub async fn reset(&self) {
        *self.refresh.lock().await = Pacing::default();
        self.current.store(None);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use secrecy::SecretString;
    use tokio::sync::oneshot;

    use super::*;

    fn token(value: &str, refresh_in: Duration, expires_in: Duration) -> AccessToken {
        AccessToken::new(
            SecretString::from(value.to_string()),
            Instant::now() + expires_in,
            Instant::now() + refresh_in,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_valid_token_serves_callers_while_its_refresh_is_in_flight() {
        let cache = Arc::new(TokenCache::default());
        let first = cache
            .get("app", || async {
                Ok(token("one", Duration::from_secs(60), Duration::from_secs(600)))
            })
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(61)).await;

        // A refresh starts and hangs (a slow token endpoint) ...
        let (release, held) = oneshot::channel::<()>();
        let refreshing = tokio::spawn({
            let cache = cache.clone();
            async move {
                cache
                    .get("app", || async move {
                        let _ = held.await;
                        Ok(token("two", Duration::from_secs(60), Duration::from_secs(600)))
                    })
                    .await
            }
        });
        tokio::task::yield_now().await;

        // ... and another caller is served the cached token at once, without waiting for it.
        let served = tokio::time::timeout(
            Duration::from_millis(1),
            cache.get("app", || async { panic!("a second refresh must not start") }),
        )
        .await
        .expect("served without waiting")
        .unwrap();
        assert!(Arc::ptr_eq(&served, &first));

        release.send(()).unwrap();
        assert_eq!(refreshing.await.unwrap().unwrap().bearer(), "two");
    }
}
