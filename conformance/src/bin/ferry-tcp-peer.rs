//! A tcp worker in its own process, driven one JSON command per line on stdin, answering one
//! JSON line per event on stdout. The two-process and network-namespace tests run it.
//!
//! ```text
//! ferry-tcp-peer [--bind ADDR]
//! {"cmd":"readable","sizes":[4096,17],"seed":3}  -> {"metadata":"<json>"} then {"outcome":"ok"}
//! {"cmd":"writable","sizes":[4096],"seed":3}     -> {"metadata":"<json>"} then {"outcome":"ok","verified":true}
//! {"cmd":"read","metadata":"<json>","seed":3}    -> {"outcome":"ok","verified":true}
//! {"cmd":"write","metadata":"<json>","seed":3}   -> {"outcome":"ok"}
//! {"cmd":"exit"}
//! ```
//!
//! Data follows the conformance suite's patterns: descriptor `i` of a read pairing holds
//! `pattern(size, seed * 131 + i)`, of a write pairing `pattern(size, seed * 137 + i)`.

use std::net::SocketAddr;

use ferry::tcp::{TcpBackend, TcpConfig};
use ferry::{Connector, Descriptor, Error, RdmaMetadata};
use ferry_conformance::rules::pattern;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

fn outcome(result: &Result<(), Error>) -> Value {
    match result {
        Ok(()) => json!("ok"),
        Err(e) => json!(format!("{e:?}")),
    }
}

fn say(value: Value) {
    println!("{value}");
}

fn sources(sizes: &[usize], seed: u64, factor: u64) -> Vec<Vec<u8>> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| pattern(n, seed * factor + i as u64))
        .collect()
}

async fn run(connector: &Connector, command: &Value) -> Result<bool, Error> {
    let sizes: Vec<usize> = command["sizes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_u64)
                .map(|n| n as usize)
                .collect()
        })
        .unwrap_or_default();
    let seed = command["seed"].as_u64().unwrap_or(0);
    let metadata = || RdmaMetadata::from_json(command["metadata"].as_str().unwrap_or(""));
    match command["cmd"].as_str().unwrap_or("") {
        "readable" => {
            let data = sources(&sizes, seed, 131);
            let mut op = connector
                .create_readable(data.iter().map(|d| Descriptor::from_slice(d)))
                .await?;
            say(json!({ "metadata": op.metadata().to_json() }));
            let result = op.wait_for_completion().await;
            say(json!({ "outcome": outcome(&result) }));
        }
        "writable" => {
            let mut landing: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0u8; n]).collect();
            let result = {
                let mut op = connector
                    .create_writable(landing.iter_mut().map(|l| Descriptor::from_mut_slice(l)))
                    .await?;
                say(json!({ "metadata": op.metadata().to_json() }));
                op.wait_for_completion().await
            };
            let verified = landing == sources(&sizes, seed, 137);
            say(json!({ "outcome": outcome(&result), "verified": verified }));
        }
        "read" => {
            let metadata = metadata()?;
            let sizes: Vec<usize> = metadata
                .descriptors
                .iter()
                .map(|d| d.size as usize)
                .collect();
            let mut landing: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0u8; n]).collect();
            let result = match connector
                .begin_read(
                    &metadata,
                    landing.iter_mut().map(|l| Descriptor::from_mut_slice(l)),
                )
                .await
            {
                Ok(mut op) => op.wait_for_completion().await,
                Err(e) => Err(e),
            };
            let verified = landing == sources(&sizes, seed, 131);
            say(json!({ "outcome": outcome(&result), "verified": verified }));
        }
        "write" => {
            let metadata = metadata()?;
            let sizes: Vec<usize> = metadata
                .descriptors
                .iter()
                .map(|d| d.size as usize)
                .collect();
            let data = sources(&sizes, seed, 137);
            let result = match connector
                .begin_write(data.iter().map(|d| Descriptor::from_slice(d)), &metadata)
                .await
            {
                Ok(mut op) => op.wait_for_completion().await,
                Err(e) => Err(e),
            };
            say(json!({ "outcome": outcome(&result) }));
        }
        "exit" => return Ok(false),
        other => say(json!({ "outcome": format!("unknown command {other:?}") })),
    }
    Ok(true)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = TcpConfig::default();
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--bind") {
        let addr: SocketAddr = args.get(i + 1).ok_or("--bind needs an address")?.parse()?;
        config.bind = addr;
    }
    let connector = Connector::builder()
        .worker_id("tcp-peer")
        .backend(TcpBackend::bind(config).await?)
        .build()
        .await?;
    say(json!({ "ready": true }));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let command: Value = match serde_json::from_str(&line) {
            Ok(command) => command,
            Err(e) => {
                say(json!({ "outcome": format!("bad command: {e}") }));
                continue;
            }
        };
        match run(&connector, &command).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => say(json!({ "outcome": format!("{e:?}") })),
        }
    }
    Ok(())
}
