//! `stele webhook`: register, list, pause, resume and delete webhook endpoints,
//! list and redrive dead letters, and `listen`, a receiver that prints what it
//! gets (for trying webhooks out and for the README tour).

use std::net::SocketAddr;

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use serde_json::{Value, json};
use stele::client::WebhookChange;
use stele::server::webhook::signature;
use stele::wire::webhook::{DeadLetterView, NewWebhook, WebhookSettings, WebhookView};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::output::{Bytes, display_bytes, escape, json_line, print_json, to_json};
use super::{CliError, ClientArgs, CursorPartitionJson, EXIT_OK, Millis, connect};

#[derive(Debug, Subcommand)]
pub(crate) enum WebhookCommand {
    /// Register an endpoint: events of TOPIC are POSTed to URL, signed, at least once,
    /// in order per key. Prints the signing secret (shown only once).
    Create(Box<CreateArgs>),
    /// Every endpoint with its state, circuit breaker, lag and last error.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop delivering to an endpoint; its position is kept.
    Pause {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Resume delivering where the endpoint stood.
    Resume {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete an endpoint and its cursors (its dead letters stay in their topic).
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// An endpoint's dead letters not yet redriven.
    DeadLetters {
        name: String,
        /// Most dead letters to show, over all partitions of the dead-letter topic
        /// [default: 1000].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        max: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deliver an endpoint's dead letters again (with their original webhook-id).
    Redrive {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run a receiver that prints each delivery (and checks its signature with --secret).
    Listen(ListenArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StartArg {
    /// Only events appended from now on.
    Latest,
    /// Every retained event.
    Earliest,
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// Endpoint name: letters, digits, '.', '_' and '-'.
    name: String,
    /// Target URL (http:// or https://).
    #[arg(value_name = "URL")]
    target: String,
    /// Topic to deliver.
    #[arg(long)]
    topic: String,
    /// Only events of this type (repeat for several).
    #[arg(long = "type", value_name = "TYPE")]
    types: Vec<String>,
    /// Only events whose key starts with this.
    #[arg(long, value_name = "PREFIX")]
    key_prefix: Option<String>,
    /// Signing secret, whsec_ and base64 [default: generated].
    #[arg(long, value_name = "whsec_...")]
    secret: Option<String>,
    /// Where delivery starts.
    #[arg(long, value_enum, default_value_t = StartArg::Latest)]
    from: StartArg,
    /// Keys in flight at once [default: 16].
    #[arg(long, value_name = "N")]
    max_in_flight: Option<u32>,
    /// Attempts per event before it is dead-lettered [default: 10].
    #[arg(long, value_name = "N")]
    max_attempts: Option<u32>,
    /// Time since the first attempt after which a failure dead-letters [default: 1d].
    #[arg(long, value_name = "DURATION")]
    max_age: Option<Millis>,
    /// First retry delay; it doubles per attempt, with jitter [default: 500ms].
    #[arg(long, value_name = "DURATION")]
    backoff_initial: Option<Millis>,
    /// Cap on the retry delay [default: 5m].
    #[arg(long, value_name = "DURATION")]
    backoff_max: Option<Millis>,
    /// Request timeout [default: the server's --webhook-timeout].
    #[arg(long, value_name = "DURATION")]
    timeout: Option<Millis>,
    /// Consecutive failures that open the circuit breaker [default: 5].
    #[arg(long, value_name = "N")]
    breaker_failures: Option<u32>,
    /// Pause of the open breaker before a probe [default: 30s].
    #[arg(long, value_name = "DURATION")]
    breaker_pause: Option<Millis>,
    /// Dead-letter topic [default: TOPIC.dead-letter].
    #[arg(long, value_name = "TOPIC")]
    dead_letter_topic: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ListenArgs {
    /// Address to listen on; port 0 picks a free port (printed on stderr).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Check each request's signature with this secret.
    #[arg(long, value_name = "whsec_...")]
    secret: Option<String>,
    /// Exit after this many deliveries.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Answer with this HTTP status.
    #[arg(long, value_name = "CODE", default_value_t = 204)]
    status: u16,
    /// Print one JSON object per delivery.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(command: WebhookCommand) -> Result<u8, CliError> {
    match command {
        WebhookCommand::Create(args) => create(*args).await,
        WebhookCommand::List { client } => {
            let webhooks = connect(&client).await?.list_webhooks().await?;
            if !client.json && webhooks.is_empty() {
                println!("no webhooks");
            }
            for webhook in &webhooks {
                print_webhook(webhook, client.json);
            }
            Ok(EXIT_OK)
        }
        WebhookCommand::Pause { name, client } => {
            change(&name, &client, WebhookChange::Pause, "paused").await
        }
        WebhookCommand::Resume { name, client } => {
            change(&name, &client, WebhookChange::Resume, "resumed").await
        }
        WebhookCommand::Delete { name, client } => {
            change(&name, &client, WebhookChange::Delete, "deleted").await
        }
        WebhookCommand::DeadLetters { name, max, client } => {
            let letters = connect(&client)
                .await?
                .dead_letters(&name, max.unwrap_or(0))
                .await?;
            if !client.json && letters.is_empty() {
                println!("no dead letters for {}", escape(&name));
            }
            // The server may answer with more than asked (up to the limit per
            // partition of the dead-letter topic); --max bounds the whole list.
            let shown = max.map_or(usize::MAX, |max| max as usize);
            for letter in letters.iter().take(shown) {
                print_dead_letter(letter, client.json);
            }
            Ok(EXIT_OK)
        }
        WebhookCommand::Redrive { name, client } => {
            let redriven = connect(&client).await?.redrive_dead_letters(&name).await?;
            if client.json {
                print_json(&json!({"webhook": name, "redriven": redriven}));
            } else {
                println!("redriving {redriven} dead letters to {name}");
            }
            Ok(EXIT_OK)
        }
        WebhookCommand::Listen(args) => listen(args).await,
    }
}

/// Pauses, resumes or deletes an endpoint and says so (`what` it became).
async fn change(name: &str, client: &ClientArgs, change: WebhookChange, what: &str) -> Result<u8, CliError> {
    connect(client).await?.change_webhook(name, change).await?;
    if client.json {
        print_json(&json!({ what: name }));
    } else {
        println!("{what} webhook {name}");
    }
    Ok(EXIT_OK)
}

async fn create(args: CreateArgs) -> Result<u8, CliError> {
    let client = connect(&args.client).await?;
    let millis = |value: Option<Millis>| value.map_or(0, |value| value.0);
    let request = NewWebhook {
        name: args.name.clone(),
        url: args.target,
        topic: args.topic,
        event_types: args.types,
        key_prefix: args.key_prefix.unwrap_or_default().into_bytes(),
        secret: args.secret,
        // Zero (and empty) takes the server's default.
        settings: WebhookSettings {
            in_flight_max: args.max_in_flight.unwrap_or(0),
            attempts_max: args.max_attempts.unwrap_or(0),
            age_max_ms: millis(args.max_age),
            backoff_initial_ms: millis(args.backoff_initial),
            backoff_max_ms: millis(args.backoff_max),
            timeout_ms: millis(args.timeout),
            breaker_failures: args.breaker_failures.unwrap_or(0),
            breaker_pause_ms: millis(args.breaker_pause),
            dead_letter_topic: args.dead_letter_topic.unwrap_or_default(),
        },
        from_earliest: args.from == StartArg::Earliest,
    };
    let (webhook, secret) = client.create_webhook(&request).await?;
    if args.client.json {
        let mut value = to_json(&WebhookJson::of(&webhook));
        value["secret"] = json!(secret);
        println!("{}", json_line(&value));
    } else {
        println!("created webhook {}", args.name);
        println!("secret: {secret}");
    }
    Ok(EXIT_OK)
}

fn state_name(webhook: &WebhookView) -> &'static str {
    if webhook.endpoint.paused {
        "paused"
    } else {
        "active"
    }
}

/// An endpoint in JSON.
#[derive(Serialize)]
struct WebhookJson<'a> {
    name: &'a str,
    url: &'a str,
    topic: &'a str,
    event_types: &'a [String],
    key_prefix: Bytes<'a>,
    state: &'static str,
    circuit: &'static str,
    lag: u64,
    delivered: u64,
    dead_lettered: u64,
    last_error: &'a str,
    last_status: u16,
    partitions: Vec<CursorPartitionJson>,
    settings: WebhookSettingsJson<'a>,
}

/// An endpoint's delivery settings in JSON, named as in the proto.
#[derive(Serialize)]
struct WebhookSettingsJson<'a> {
    max_in_flight: u32,
    max_attempts: u32,
    max_age_ms: u64,
    backoff_initial_ms: u64,
    backoff_max_ms: u64,
    timeout_ms: u64,
    breaker_failures: u32,
    breaker_pause_ms: u64,
    dead_letter_topic: &'a str,
}

impl<'a> WebhookJson<'a> {
    fn of(webhook: &'a WebhookView) -> WebhookJson<'a> {
        let endpoint = &webhook.endpoint;
        let settings = &endpoint.settings;
        WebhookJson {
            name: &endpoint.name,
            url: &endpoint.url,
            topic: &endpoint.topic,
            event_types: &endpoint.event_types,
            key_prefix: Bytes(&endpoint.key_prefix),
            state: state_name(webhook),
            circuit: webhook.circuit,
            lag: webhook.lag,
            delivered: webhook.delivered_count,
            dead_lettered: webhook.dead_lettered_count,
            last_error: &webhook.last_error,
            last_status: webhook.last_status,
            partitions: webhook.partitions.iter().map(CursorPartitionJson::of).collect(),
            settings: WebhookSettingsJson {
                max_in_flight: settings.in_flight_max,
                max_attempts: settings.attempts_max,
                max_age_ms: settings.age_max_ms,
                backoff_initial_ms: settings.backoff_initial_ms,
                backoff_max_ms: settings.backoff_max_ms,
                timeout_ms: settings.timeout_ms,
                breaker_failures: settings.breaker_failures,
                breaker_pause_ms: settings.breaker_pause_ms,
                dead_letter_topic: &settings.dead_letter_topic,
            },
        }
    }
}

fn print_webhook(webhook: &WebhookView, json_output: bool) {
    if json_output {
        print_json(&WebhookJson::of(webhook));
        return;
    }
    let endpoint = &webhook.endpoint;
    println!(
        "{}  {}  circuit={}  lag={}  delivered={}  dead-lettered={}  topic={}  url={}",
        escape(&endpoint.name),
        state_name(webhook),
        webhook.circuit,
        webhook.lag,
        webhook.delivered_count,
        webhook.dead_lettered_count,
        escape(&endpoint.topic),
        escape(&endpoint.url)
    );
    if !webhook.last_error.is_empty() {
        println!("  last error: {}", escape(&webhook.last_error));
    }
}

/// A dead letter in JSON.
#[derive(Serialize)]
struct DeadLetterJson<'a> {
    dead_letter_partition: u32,
    dead_letter_offset: u64,
    topic: &'a str,
    partition: u32,
    offset: u64,
    key: Bytes<'a>,
    #[serde(rename = "type")]
    event_type: &'a str,
    webhook_id: &'a str,
    reason: &'a str,
    last_status: u16,
    attempts: u32,
}

fn print_dead_letter(letter: &DeadLetterView, json_output: bool) {
    if json_output {
        print_json(&DeadLetterJson {
            dead_letter_partition: letter.dead_letter_partition,
            dead_letter_offset: letter.dead_letter_offset,
            topic: &letter.topic,
            partition: letter.partition,
            offset: letter.offset,
            key: Bytes(&letter.key),
            event_type: &letter.event_type,
            webhook_id: &letter.webhook_id,
            reason: &letter.reason,
            last_status: letter.last_status,
            attempts: letter.attempts,
        });
    } else {
        println!(
            "{}/{}@{}  key={}  type={}  attempts={}  status={}  id={}  {}",
            escape(&letter.topic),
            letter.partition,
            letter.offset,
            display_bytes(&letter.key),
            escape(&letter.event_type),
            letter.attempts,
            letter.last_status,
            escape(&letter.webhook_id),
            escape(&letter.reason)
        );
    }
}

/// The most bytes of one request the listener reads.
const LISTEN_REQUEST_SIZE_MAX: usize = 16 << 20;

async fn listen(args: ListenArgs) -> Result<u8, CliError> {
    let secret = args
        .secret
        .as_deref()
        .map(signature::decode_secret)
        .transpose()
        .map_err(CliError::Usage)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|error| CliError::Failed(format!("cannot listen on {}: {error}", args.listen)))?;
    let address = listener
        .local_addr()
        .map_err(|error| CliError::Failed(format!("cannot read the listener address: {error}")))?;
    eprintln!("stele webhook listen: listening on http://{address}");
    let mut received = 0u64;
    while args.count.is_none_or(|count| received < count) {
        let (mut stream, _) = listener
            .accept()
            .await
            .map_err(|error| CliError::Failed(format!("accept failed: {error}")))?;
        let Some((headers, body)) = read_request(&mut stream).await else {
            continue;
        };
        let reason = match args.status {
            200..=299 => "OK",
            _ => "Error",
        };
        let response = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            args.status
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
        received += 1;
        print_delivery(&headers, &body, secret.as_deref(), args.json);
    }
    Ok(EXIT_OK)
}

/// Reads one HTTP/1.1 request: lower-cased headers and the body.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<(Vec<(String, String)>, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    // Bounded by LISTEN_REQUEST_SIZE_MAX.
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break end + 4;
        }
        if buffer.len() > LISTEN_REQUEST_SIZE_MAX {
            return None;
        }
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let headers: Vec<(String, String)> = head
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let length = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse::<usize>().ok())
        .unwrap_or(0)
        .min(LISTEN_REQUEST_SIZE_MAX);
    let mut body = buffer[head_end..].to_vec();
    while body.len() < length {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..read]);
    }
    body.truncate(length);
    Some((headers, body))
}

fn print_delivery(headers: &[(String, String)], body: &[u8], secret: Option<&[u8]>, json_output: bool) {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(header, _)| header == name)
            .map_or("", |(_, value)| value.as_str())
    };
    let id = header("webhook-id");
    let timestamp = header("webhook-timestamp");
    let verified = secret.map(|secret| {
        let expected = timestamp
            .parse::<i64>()
            .map(|timestamp_s| signature::sign(secret, id, timestamp_s, body))
            .unwrap_or_default();
        header("webhook-signature")
            .split(' ')
            .any(|candidate| !expected.is_empty() && candidate == expected)
    });
    let event: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if json_output {
        println!(
            "{}",
            json_line(
                &json!({"webhook_id": id, "timestamp": timestamp, "verified": verified, "event": event})
            )
        );
        return;
    }
    let signature = match verified {
        Some(true) => "signature ok",
        Some(false) => "SIGNATURE BAD",
        None => "signature unchecked",
    };
    // Values printed as JSON are escaped by json_line; plain strings by escape.
    println!(
        "{}  {}/{}@{}  key={}  type={}  {signature}  payload={}",
        escape(id),
        escape(event["topic"].as_str().unwrap_or("?")),
        event["partition"],
        event["offset"],
        json_line(&event["key"]),
        escape(event["type"].as_str().unwrap_or("?")),
        json_line(&event["payload"])
    );
}
