//! A subscriber: prints every event of a pattern, resuming after reconnects.
//!
//! ```sh
//! SCOPECAST_URL=http://127.0.0.1:7070 SCOPECAST_CLIENT_ID=... SCOPECAST_CLIENT_SECRET=... \
//!   cargo run -p scopecast-client --example subscriber -- 'adt.>'
//! ```
//!
//! For a broker whose certificate comes from an organisation's own CA, also set
//! `SCOPECAST_CACERT=/path/to/ca.pem`.

use futures_util::StreamExt;
use scopecast_client::{ConnectOptions, Item, SubscribeError, TokenSource};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("SCOPECAST_URL").unwrap_or_else(|_| "http://127.0.0.1:7070".into());
    let pattern = std::env::args().nth(1).unwrap_or_else(|| ">".into());
    let tokens = TokenSource::client_secret(
        &url,
        &required("SCOPECAST_CLIENT_ID")?,
        &required("SCOPECAST_CLIENT_SECRET")?,
    );
    let mut options = ConnectOptions::new().token_source(tokens);
    if let Ok(ca) = std::env::var("SCOPECAST_CACERT") {
        // Trusted besides the bundled and system roots, by the token requests too.
        options = options.add_root_certificates(ca)?;
    }
    let client = options.connect(&url).await?;
    let mut events = match client.subscribe(&pattern).await {
        Ok(s) => s,
        Err(SubscribeError::Forbidden { required_scope }) => {
            eprintln!("this application lacks the scope {required_scope}");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    while let Some(item) = events.next().await {
        match item {
            Item::Event(e) => println!("{} {} {}", e.seq, e.topic, e.data.get()),
            Item::Gap { from_seq, to_seq } => {
                eprintln!("missed {from_seq}..={to_seq} (past retention)")
            }
            Item::Ended(why) => return Err(why.into()),
        }
    }
    Ok(())
}

/// An environment variable the example needs, or an error that names it.
fn required(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| {
        format!("set {name} (the application's non-production client ID and secret, from `scopecast app create --json`)")
    })
}
