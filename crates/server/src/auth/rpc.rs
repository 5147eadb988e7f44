//! The one table of `stele.v1.Stele`'s RPCs: for each, its grant group and where
//! its topic comes from. Every handler starts by asking the authenticator for a
//! [`super::Caller`] with its [`Rpc`], and a test walks the service descriptor
//! so that an RPC missing here fails it.

use super::grant::Group;

/// Where an RPC's topic comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicFrom {
    /// The request's `topic` field.
    Request,
    /// The `topic` of every message of the stream, checked per message (AppendSession).
    EveryMessage,
    /// The topic of the webhook endpoint the request names.
    Webhook,
    /// The request's `topic` and the `dead_letter_topic` it names (CreateWebhook).
    WebhookTopics,
    /// The topic of the consumer group the request (for Consume: its `join`)
    /// names.
    Group,
    /// The request's `topic` and its settings' `dead_letter_topic` (CreateGroup).
    GroupTopics,
    /// No single topic: the response lists only what the grants reach.
    Listing,
    /// Not about a topic: the group's grant on any pattern (`tokens:*`).
    None,
}

/// How one RPC is authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The group whose grant the call needs; `None` needs only a credential.
    pub group: Option<Group>,
    /// Where its topic comes from.
    pub topic: TopicFrom,
}

macro_rules! rpcs {
    ($($rpc:ident => $group:expr, $topic:ident;)*) => {
        /// Every RPC of `stele.v1.Stele`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Rpc {
            $(
                #[doc = concat!("`", stringify!($rpc), "`.")]
                $rpc,
            )*
        }

        impl Rpc {
            /// Every RPC, in the table's order.
            pub const ALL: &'static [Rpc] = &[$(Rpc::$rpc,)*];

            /// The method's name in the proto.
            pub fn name(self) -> &'static str {
                match self {
                    $(Rpc::$rpc => stringify!($rpc),)*
                }
            }

            /// The RPC of a proto method name.
            pub fn from_name(name: &str) -> Option<Rpc> {
                Rpc::ALL.iter().copied().find(|rpc| rpc.name() == name)
            }

            /// How the RPC is authorized.
            pub fn rule(self) -> Rule {
                match self {
                    $(Rpc::$rpc => Rule { group: $group, topic: TopicFrom::$topic },)*
                }
            }
        }
    };
}

const READ: Option<Group> = Some(Group::Read);
const WRITE: Option<Group> = Some(Group::Write);
const CONSUME: Option<Group> = Some(Group::Consume);
const ADMIN: Option<Group> = Some(Group::Admin);
const TOKENS: Option<Group> = Some(Group::Tokens);
const ANY: Option<Group> = None;

rpcs! {
    CreateTopic => ADMIN, Request;
    DescribeTopic => READ, Request;
    ListTopics => ANY, Listing;
    DeleteTopic => ADMIN, Request;
    Append => WRITE, Request;
    AppendBatch => WRITE, Request;
    AppendSession => WRITE, EveryMessage;
    OpenProducer => WRITE, Request;
    Read => READ, Request;
    ReadKey => READ, Request;
    Subscribe => READ, Request;
    CommitCursor => CONSUME, Request;
    GetCursor => READ, Request;
    ListCursors => READ, Request;
    DeleteCursor => CONSUME, Request;
    CreateWebhook => ADMIN, WebhookTopics;
    ListWebhooks => ADMIN, Listing;
    PauseWebhook => ADMIN, Webhook;
    ResumeWebhook => ADMIN, Webhook;
    DeleteWebhook => ADMIN, Webhook;
    ListDeadLetters => ADMIN, Webhook;
    RedriveDeadLetters => ADMIN, Webhook;
    CreateGroup => ADMIN, GroupTopics;
    DescribeGroup => READ, Group;
    ListGroups => ANY, Listing;
    DeleteGroup => ADMIN, Group;
    SeekGroup => ADMIN, Group;
    Consume => CONSUME, Group;
    ListParked => READ, Group;
    RedriveParked => ADMIN, Group;
    CreateToken => TOKENS, None;
    ListTokens => TOKENS, None;
    RevokeToken => TOKENS, None;
    WhoAmI => ANY, None;
    Backup => ADMIN, None;
    UpdateTopic => ADMIN, Request;
}

impl Rpc {
    /// Whether every call is written to the audit log (admin and token
    /// operations); denials of every RPC are, too.
    pub fn is_audited(self) -> bool {
        matches!(self.rule().group, Some(Group::Admin | Group::Tokens))
    }
}
