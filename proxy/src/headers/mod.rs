//! Header work at the proxy boundary: hop-by-hop removal, forwarding headers, Host,
//! cookies and the session-affinity cookies.

pub(crate) mod affinity;
mod cookie;
mod forwarding;
mod hop;
mod host;
mod trusted;

pub(crate) use cookie::cookie;
pub(crate) use forwarding::{add_forwarding, forwarded_for, request_id, strip_inbound};
pub(crate) use hop::{strip_hop_by_hop, switched_as_asked, upgrade, Upgrade};
pub(crate) use host::{authority_of, routed_host, shadow_host, strip_port};
pub(crate) use trusted::{cidr, TrustedProxies};
