//! Grants: `<group>:<topic pattern>`, e.g. `read:orders`, `write:payments.*`,
//! `admin:*`. A pattern is a topic name, a prefix ending in `*`, or `*` alone.

use std::fmt;

use stele_engine::limits::{TOKEN_GRANT_SIZE_MAX, TOKEN_GRANTS_COUNT_MAX};

/// The operation groups; every RPC belongs to at most one (`super::rpc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    /// Reads, subscriptions, topic descriptions, cursor reads.
    Read,
    /// Appends and producers.
    Write,
    /// Cursor commits and deletes.
    Consume,
    /// Topics and webhooks.
    Admin,
    /// Issuing and revoking tokens.
    Tokens,
    /// Scraping `/metrics` (not an RPC; pattern `*`).
    Metrics,
}

impl Group {
    /// Every group.
    pub const ALL: [Group; 6] = [
        Group::Read,
        Group::Write,
        Group::Consume,
        Group::Admin,
        Group::Tokens,
        Group::Metrics,
    ];

    /// The groups whose grants make a topic visible in listings.
    pub const ON_TOPICS: [Group; 4] = [Group::Read, Group::Write, Group::Consume, Group::Admin];

    /// The group's name in a grant.
    pub fn name(self) -> &'static str {
        match self {
            Group::Read => "read",
            Group::Write => "write",
            Group::Consume => "consume",
            Group::Admin => "admin",
            Group::Tokens => "tokens",
            Group::Metrics => "metrics",
        }
    }

    fn parse(text: &str) -> Option<Group> {
        Group::ALL.into_iter().find(|group| group.name() == text)
    }
}

/// Which topics a grant reaches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pattern {
    /// Exactly this topic.
    Exact(String),
    /// Topics starting with this (the pattern without its `*`).
    Prefix(String),
}

impl Pattern {
    /// Whether the pattern reaches `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Pattern::Exact(name) => name == topic,
            Pattern::Prefix(prefix) => topic.starts_with(prefix.as_str()),
        }
    }

    /// Whether every topic `other` reaches, this reaches too.
    pub fn covers(&self, other: &Pattern) -> bool {
        match (self, other) {
            (Pattern::Prefix(prefix), Pattern::Exact(name) | Pattern::Prefix(name)) => {
                name.starts_with(prefix.as_str())
            }
            (Pattern::Exact(name), Pattern::Exact(other)) => name == other,
            (Pattern::Exact(_), Pattern::Prefix(_)) => false,
        }
    }
}

/// One grant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Grant {
    /// The operations.
    pub group: Group,
    /// The topics.
    pub pattern: Pattern,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pattern {
            Pattern::Exact(name) => write!(f, "{}:{name}", self.group.name()),
            Pattern::Prefix(prefix) => write!(f, "{}:{prefix}*", self.group.name()),
        }
    }
}

impl Grant {
    /// Parses `<group>:<pattern>`.
    ///
    /// # Errors
    /// A message naming what is wrong.
    pub fn parse(text: &str) -> Result<Grant, String> {
        if text.len() > TOKEN_GRANT_SIZE_MAX {
            return Err(format!("grant longer than {TOKEN_GRANT_SIZE_MAX} bytes"));
        }
        let Some((group, pattern)) = text.split_once(':') else {
            return Err(format!("grant {text:?} is not <group>:<topic pattern>"));
        };
        let group = Group::parse(group).ok_or_else(|| {
            format!(
                "grant {text:?}: unknown group {group:?}; groups are read, write, consume, admin, tokens and metrics"
            )
        })?;
        let pattern = match pattern.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.to_string()),
            None => Pattern::Exact(pattern.to_string()),
        };
        let body = match &pattern {
            Pattern::Exact(name) => {
                if name.is_empty() {
                    return Err(format!("grant {text:?} has no topic pattern"));
                }
                name
            }
            Pattern::Prefix(prefix) => prefix,
        };
        if body.contains('*') || body.chars().any(char::is_control) {
            return Err(format!("grant {text:?}: '*' may only end a pattern"));
        }
        Ok(Grant { group, pattern })
    }

    /// Whether this grant allows `group` on `topic`.
    pub fn allows(&self, group: Group, topic: &str) -> bool {
        self.group == group && self.pattern.matches(topic)
    }

    /// Whether everything `other` allows, this allows too.
    pub fn covers(&self, other: &Grant) -> bool {
        self.group == other.group && self.pattern.covers(&other.pattern)
    }
}

/// A credential's grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants(Vec<Grant>);

impl Grants {
    /// Every group on every topic: the bootstrap token, and every caller under `--auth none`.
    pub fn all() -> Grants {
        Grants(
            Group::ALL
                .into_iter()
                .map(|group| Grant {
                    group,
                    pattern: Pattern::Prefix(String::new()),
                })
                .collect(),
        )
    }

    /// Parses a list of grants (1 to [`TOKEN_GRANTS_COUNT_MAX`]).
    ///
    /// # Errors
    /// A message naming the first bad grant.
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> Result<Grants, String> {
        if texts.is_empty() {
            return Err("a token needs at least one grant".to_string());
        }
        if texts.len() > TOKEN_GRANTS_COUNT_MAX {
            return Err(format!("a token has at most {TOKEN_GRANTS_COUNT_MAX} grants"));
        }
        let mut grants: Vec<Grant> = texts
            .iter()
            .map(|text| Grant::parse(text.as_ref()))
            .collect::<Result<_, _>>()?;
        grants.sort();
        grants.dedup();
        Ok(Grants(grants))
    }

    /// Whether some grant allows `group` on `topic`.
    pub fn allows(&self, group: Group, topic: &str) -> bool {
        self.0.iter().any(|grant| grant.allows(group, topic))
    }

    /// Whether some grant covers `grant` (no caller hands out more than it holds).
    pub fn covers(&self, grant: &Grant) -> bool {
        self.0.iter().any(|held| held.covers(grant))
    }

    /// The grants in their text form.
    pub fn texts(&self) -> Vec<String> {
        self.0.iter().map(Grant::to_string).collect()
    }

    /// The grants.
    pub fn iter(&self) -> impl Iterator<Item = &Grant> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_names_prefixes_and_everything() {
        // Goal: the documented examples mean what the proto says.
        let grants = Grants::parse(&["read:orders", "write:payments.*", "admin:*"]).expect("parse");
        assert!(grants.allows(Group::Read, "orders"));
        assert!(!grants.allows(Group::Read, "orders.eu"));
        assert!(!grants.allows(Group::Write, "orders"));
        assert!(grants.allows(Group::Write, "payments.eu"));
        assert!(!grants.allows(Group::Write, "payments"));
        assert!(grants.allows(Group::Admin, "anything"));
        assert!(!grants.allows(Group::Tokens, ""));
        assert_eq!(grants.texts(), vec!["read:orders", "write:payments.*", "admin:*"]);
    }

    #[test]
    fn bad_grants_are_refused_with_a_reason() {
        for bad in ["read", "reed:orders", "read:", "read:a*b", "read:**", ""] {
            assert!(Grant::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Grants::parse::<&str>(&[]).is_err());
        let too_many: Vec<String> = (0..=TOKEN_GRANTS_COUNT_MAX)
            .map(|i| format!("read:t{i}"))
            .collect();
        assert!(Grants::parse(&too_many).is_err());
    }

    #[test]
    fn covering_is_no_escalation() {
        // Goal: a prefix covers its narrower prefixes and names, never the reverse.
        let held = Grants::parse(&["read:orders.*"]).expect("parse");
        for (grant, covered) in [
            ("read:orders.eu", true),
            ("read:orders.eu.*", true),
            ("read:orders.*", true),
            ("read:orders", false),
            ("read:*", false),
            ("write:orders.eu", false),
        ] {
            assert_eq!(
                held.covers(&Grant::parse(grant).expect("parse")),
                covered,
                "{grant}"
            );
        }
        assert!(Grants::all().covers(&Grant::parse("tokens:*").expect("parse")));
    }
}
