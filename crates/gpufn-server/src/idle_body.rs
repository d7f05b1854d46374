//! Bodies that may not stall: a caller's request body must send something at least every
//! `--client-body-timeout-s` (nginx's `client_body_timeout`), an instance's response body every
//! `request_timeout_s`. A stalled body ends with [`BodyError::Stalled`], so the slot it holds is
//! freed and its busy time stops; and a request body that breaks (a malformed chunk, a caller
//! that went away) is told apart from an instance that broke ([`caller_fault`]): the caller's
//! fault is answered to the caller and never marks the instance broken.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::error::ApiError;
use crate::upstream::UpstreamError;

/// Why a body ended early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Nothing came for this long.
    #[error("no data for {0:?}")]
    Stalled(Duration),
    /// The body itself failed (malformed framing, the sender went away).
    #[error("{0}")]
    Broken(axum::Error),
}

/// A body that fails with [`BodyError::Stalled`] when no frame comes for `idle`.
pub struct IdleBody<B> {
    inner: B,
    idle: Duration,
    /// Made at the first wait (a body that is always ready costs no timer and no clock read),
    /// then reset, not re-allocated.
    sleep: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl<B> std::fmt::Debug for IdleBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleBody")
            .field("idle", &self.idle)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<B> IdleBody<B> {
    /// `inner`, bounded by `idle` between frames.
    pub fn new(inner: B, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            sleep: None,
            done: false,
        }
    }
}

impl<B> http_body::Body for IdleBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(sleep) = this.sleep.as_mut() {
                    sleep.as_mut().reset(Instant::now() + this.idle);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(BodyError::Broken(axum::Error::new(e)))))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => match this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(this.idle)))
                .as_mut()
                .poll(cx)
            {
                Poll::Ready(()) => {
                    this.done = true;
                    Poll::Ready(Some(Err(BodyError::Stalled(this.idle))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The answer to a caller whose own request body failed while it was being sent to an instance
/// (`None`: the instance failed, not the caller): 408 when it stalled, 400 when it broke. The
/// instance is not at fault and must not be marked broken.
pub(crate) fn caller_fault(e: &UpstreamError) -> Option<ApiError> {
    let UpstreamError::Http(h) = e else {
        return None;
    };
    if !h.is_user() {
        return None;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(h);
    while let Some(c) = cause {
        if let Some(BodyError::Stalled(idle)) = c.downcast_ref::<BodyError>() {
            return Some(stalled(*idle));
        }
        cause = c.source();
    }
    Some(ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_request_body",
        "the request body broke off or was malformed",
    ))
}

/// 408: the caller's request body stalled for `idle`.
pub(crate) fn stalled(idle: Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        format!(
            "the request body sent nothing for {}s (--client-body-timeout-s)",
            idle.as_secs()
        ),
    )
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    /// A body fed from a channel.
    struct Chan(tokio::sync::mpsc::Receiver<Bytes>);

    impl http_body::Body for Chan {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
        }
    }

    fn chan() -> (tokio::sync::mpsc::Sender<Bytes>, Chan) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        (tx, Chan(rx))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_sends_nothing_for_the_idle_time_fails_as_stalled() {
        let (tx, body) = chan();
        let mut b = IdleBody::new(body, Duration::from_secs(60));
        tx.send(Bytes::from_static(b"a")).await.expect("send");
        let first = b.frame().await.expect("a frame").expect("ok");
        assert_eq!(first.into_data().expect("data"), "a");
        // Nothing more: the paused clock runs to the deadline.
        let err = b.frame().await.expect("an end").expect_err("stalled");
        assert!(matches!(err, BodyError::Stalled(d) if d == Duration::from_secs(60)));
        assert!(b.frame().await.is_none(), "ended");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn each_frame_restarts_the_clock() {
        let (tx, body) = chan();
        let mut b = IdleBody::new(body, Duration::from_secs(10));
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(9)).await;
            tx.send(Bytes::from_static(b"x")).await.expect("send");
            assert!(b.frame().await.expect("frame").is_ok());
        }
        drop(tx);
        assert!(b.frame().await.is_none(), "a body that ends is not stalled");
    }
}
