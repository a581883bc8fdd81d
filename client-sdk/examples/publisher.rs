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
        &std::env::var("SCOPECAST_CLIENT_ID")?,
        &std::env::var("SCOPECAST_CLIENT_SECRET")?,
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
    Ok(())
}
