//! A publisher: publishes one FHIR-like event and prints its `seq`.
//!
//! ```sh
//! SCOPECAST_URL=http://127.0.0.1:7070 SCOPECAST_CLIENT_ID=... SCOPECAST_CLIENT_SECRET=... \
//!   cargo run -p scopecast-client --example publisher -- adt.patient.admitted
//! ```

use scopecast_client::{PublishError, TokenSource};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("SCOPECAST_URL").unwrap_or_else(|_| "http://127.0.0.1:7070".into());
    let topic = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "adt.patient.admitted".into());
    let tokens = TokenSource::client_secret(
        &url,
        &required("SCOPECAST_CLIENT_ID")?,
        &required("SCOPECAST_CLIENT_SECRET")?,
    );
    let client = scopecast_client::connect(&url, tokens).await?;
    let encounter =
        json!({"resourceType": "Encounter", "status": "in-progress", "class": {"code": "IMP"}});
    match client.publish(&topic, &encounter).await {
        Ok(seq) => println!("stored as seq {seq}"),
        Err(PublishError::Forbidden { required_scope }) => {
            eprintln!("this application lacks the scope {required_scope}")
        }
        Err(e) => return Err(e.into()),
    }
    // A close frame, so the broker logs a normal close rather than an abrupt disconnect.
    client.close().await;
    Ok(())
}

/// An environment variable the example needs, or an error that names it.
fn required(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| {
        format!("set {name} (the application's non-production client ID and secret, from `scopecast app create --json`)")
    })
}
