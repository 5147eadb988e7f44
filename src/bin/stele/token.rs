//! `stele token`: generate a bootstrap token offline, issue, list and revoke
//! tokens, register client-certificate principals, and `whoami`.

use std::time::{Duration, UNIX_EPOCH};

use clap::Subcommand;
use serde_json::json;
use stele::client::TokenInfo;

use super::output::{escape, print_json};
use super::{CliError, ClientArgs, EXIT_OK, Millis, connect};

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Print a new random token without a server: the first administrator's, for
    /// `stele serve --auth required --bootstrap-token-file FILE`.
    Generate,
    /// Issue a token (or, with --certificate-subject, register a client certificate).
    /// Prints the token on stdout, once; it is stored only as a hash.
    Create {
        /// A label: letters, digits, '.', '_' and '-'.
        #[arg(long)]
        name: String,
        /// `<group>:<topic pattern>`; groups are read, write, consume, admin and tokens;
        /// a pattern is a topic, a prefix ending in '*', or '*'. Repeat for more.
        #[arg(long = "grant", value_name = "GRANT", required = true)]
        grants: Vec<String>,
        /// Lifetime, e.g. 30d or 12h [default: never expires].
        #[arg(long, value_name = "DURATION")]
        expires: Option<Millis>,
        /// Register verified client certificates with this subject (common name, else
        /// first DNS or URI name) instead of issuing a secret.
        #[arg(long, value_name = "SUBJECT")]
        certificate_subject: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every token and principal, revoked and expired ones included (never secrets).
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a token by id: its next call fails and its open streams end.
    Revoke {
        /// The token's id (the 16 characters after `stele_`, as `list` shows).
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Who the server takes this command's credential to be, and its grants.
    Whoami {
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub(crate) async fn run(command: TokenCommand) -> Result<u8, CliError> {
    match command {
        TokenCommand::Generate => {
            let (_, token) = stele::server::auth::token::generate()
                .map_err(|error| CliError::Failed(format!("the random source failed: {error}")))?;
            println!("{token}");
            Ok(EXIT_OK)
        }
        TokenCommand::Create {
            name,
            grants,
            expires,
            certificate_subject,
            client,
        } => {
            let expires_in = match expires {
                Some(Millis(0)) => return Err(CliError::Usage("--expires must be above 0".to_string())),
                Some(Millis(ms)) => Some(Duration::from_millis(ms)),
                None => None,
            };
            let server = connect(&client).await?;
            let (token, secret) = match &certificate_subject {
                Some(subject) => (
                    server
                        .register_certificate(&name, subject, &grants, expires_in)
                        .await?,
                    String::new(),
                ),
                None => server.create_token(&name, &grants, expires_in).await?,
            };
            if client.json {
                let mut line = token_json(&token);
                line["secret"] = json!(secret);
                print_json(&line);
            } else {
                eprintln!("{}", describe(&token));
                if secret.is_empty() {
                    println!(
                        "registered certificate subject {}",
                        escape(&token.certificate_subject)
                    );
                } else {
                    eprintln!("the token is shown only now:");
                    println!("{secret}");
                }
            }
            Ok(EXIT_OK)
        }
        TokenCommand::List { client } => {
            let tokens = connect(&client).await?.list_tokens().await?;
            if !client.json && tokens.is_empty() {
                println!("no tokens");
            }
            for token in &tokens {
                if client.json {
                    print_json(&token_json(token));
                } else {
                    println!("{}", describe(token));
                }
            }
            Ok(EXIT_OK)
        }
        TokenCommand::Revoke { id, client } => {
            let token = connect(&client).await?.revoke_token(&id).await?;
            if client.json {
                print_json(&token_json(&token));
            } else {
                println!("revoked {}", describe(&token));
            }
            Ok(EXIT_OK)
        }
        TokenCommand::Whoami { client } => {
            let me = connect(&client).await?.who_am_i().await?;
            if client.json {
                print_json(&json!({
                    "principal": me.principal,
                    "name": me.name,
                    "grants": me.grants,
                    "auth_required": me.auth_required,
                }));
            } else {
                let name = if me.name.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", escape(&me.name))
                };
                println!("{}{name}: {}", me.principal, me.grants.join(" "));
                if !me.auth_required {
                    println!("the server does not require authentication (--auth none)");
                }
            }
            Ok(EXIT_OK)
        }
    }
}

fn token_json(token: &TokenInfo) -> serde_json::Value {
    json!({
        "id": token.id,
        "name": token.name,
        "grants": token.grants,
        "certificate_subject": token.certificate_subject,
        "created_at_ms": token.created_at_ms,
        "expires_at_ms": token.expires_at_ms,
        "revoked_at_ms": token.revoked_at_ms,
        "created_by": token.created_by,
    })
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// One line: id, name, what it is, grants, state.
fn describe(token: &TokenInfo) -> String {
    let kind = if token.certificate_subject.is_empty() {
        "token".to_string()
    } else {
        format!("certificate {}", escape(&token.certificate_subject))
    };
    let state = if token.revoked_at_ms != 0 {
        format!("revoked {}", time(token.revoked_at_ms))
    } else if token.expires_at_ms != 0 {
        format!("expires {}", time(token.expires_at_ms))
    } else {
        "never expires".to_string()
    };
    format!(
        "{} {} {kind} [{}] {state}, created {} by {}",
        token.id,
        escape(&token.name),
        token.grants.join(" "),
        time(token.created_at_ms),
        token.created_by
    )
}
