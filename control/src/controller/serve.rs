//! `/healthz` (the control loop runs), `/readyz` (the first compile and
//! apply succeeded) and `/metrics` (Prometheus) over plain HTTP.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use super::metrics::Metrics;

pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render))
        .with_state(metrics)
}

async fn healthz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.alive() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "control loop stopped\n")
    }
}

/// See [`Metrics::readiness`] (why a follower is ready, why an outage keeps the code).
async fn readyz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    let (code, body) = m.readiness();
    (StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE), body)
}

async fn render(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], m.render())
}

/// Serves until `shutdown` completes.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    axum::serve(listener, router(metrics)).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn health_ready_and_metrics() {
        let metrics = Arc::new(Metrics::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, metrics.clone(), async {
            let _ = stopped.await;
        }));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 503"));
        metrics.set_alive(true);
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        metrics.set_ready();
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let page = get(addr, "/metrics").await;
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(page.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{page}");
        for name in [
            "krites_control_compiles_total",
            "krites_control_compile_errors_total",
            "krites_control_last_compile_timestamp_seconds",
            "krites_control_last_compile_duration_seconds",
            "krites_control_objects",
            "krites_control_invalid_objects",
            "krites_control_applies_total",
            "krites_control_config_bytes",
            "krites_control_ready 1",
        ] {
            assert!(page.contains(&format!("\n# TYPE {}", name.split(' ').next().unwrap())), "{name} missing:\n{page}");
            assert!(page.contains(name), "{name} missing:\n{page}");
        }
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
