//! `[graph]`: the tenant, the app's credentials, the national cloud, and the Graph client's
//! tunables.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Dur, Secret};
use crate::graph::ClientOptions;

/// `[graph]`: the tenant, the app's credentials and how to talk to Graph.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GraphSettings {
    /// Directory (tenant) id or domain.
    #[serde(default)]
    pub tenant_id: String,
    /// Application (client) id of the app registration.
    #[serde(default)]
    pub client_id: String,
    /// Client secret (prefer `GRAPH_CDC__GRAPH__CLIENT_SECRET` or `client_secret_file`).
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// File holding the client secret (e.g. a mounted Kubernetes secret).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Certificate (PEM) for certificate credentials, with `private_key_path`.
    #[serde(default)]
    pub certificate_path: Option<PathBuf>,
    /// The certificate's RSA private key (PEM).
    #[serde(default)]
    pub private_key_path: Option<PathBuf>,
    /// National cloud: `global`, `usgov`, `usgov-dod` or `china` (its Graph and login hosts).
    pub cloud: Cloud,
    /// Override of the Graph host (`/v1.0` and `/beta` are appended), e.g. a simulator.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Override of the login host (token URL: `{authority_url}/{tenant_id}/oauth2/v2.0/token`).
    #[serde(default)]
    pub authority_url: Option<String>,
    /// `Prefer: odata.maxpagesize` (1..=1000).
    pub page_size: usize,
    /// How often a partition polls its deltaLink: at least 5s against Microsoft's Graph
    /// (no floor when `base_url` points at another host, such as a simulator).
    pub poll_interval: Dur,
    /// The poll interval of a partition Graph notifies of changes (`[notifications]`): a
    /// safety net for notifications lost or late; a notification starts a round at once.
    pub poll_interval_with_notifications: Dur,
    /// Random spread of polls, a fraction of `poll_interval` (0 ≤ jitter < 1).
    pub poll_jitter: f64,
    /// `Prefer: outlook.timezone` for calendar views: a Windows name (`W. Europe Standard
    /// Time`) or an IANA one (`Europe/Berlin`), checked against both lists; `UTC` sends none.
    pub timezone: String,
    /// Requests in flight per mailbox (Outlook allows 4).
    pub max_concurrency_per_mailbox: usize,
    /// Requests in flight overall.
    pub max_concurrency: usize,
    /// Send idle deltaLink polls in JSON batches (`POST /$batch`, up to 20 per request);
    /// items Graph does not answer with 200 are retried one by one.
    pub batch_polls: bool,
    /// Ask for immutable ids (`Prefer: IdType="ImmutableId"`) on calendar view and calendar
    /// list requests. Outlook's default ids change when an event moves to another calendar
    /// of the mailbox; immutable ones stay for the item's life in the mailbox
    /// (learn.microsoft.com/graph/outlook-immutable-id), so a moved event keeps its record
    /// key. On by default. Switching it later changes every event's id: decide before the
    /// first sync, or resync the calendar view partitions after the switch.
    pub immutable_ids: bool,
    /// Timeout of one Graph request (at least 1s).
    pub request_timeout: Dur,
    /// Retries of a throttled, failing or malformed request before the partition waits.
    pub max_retries: u32,
    /// First wait between retries without `Retry-After` (it doubles up to `max_backoff`).
    pub base_backoff: Dur,
    /// Longest wait between retries without `Retry-After`.
    pub max_backoff: Dur,
    /// Largest answer body read from Graph or the token endpoint, in bytes (default 64 MiB):
    /// a larger one is given up as it arrives and retried like a malformed answer.
    pub max_response_bytes: u64,
    /// Allow `http://` in `base_url` and `authority_url` on a host that is not loopback (a
    /// simulator in another container): the client secret and access tokens then cross the
    /// network in clear text. Off by default; loopback hosts may always use `http://`.
    pub allow_insecure_http: bool,
    /// How often each partition re-reads itself from scratch to heal what delta rounds never
    /// report (a deleted occurrence of a series): keys the round does not return are
    /// tombstoned (`removed-reason: reconcile`), unchanged items write nothing. Partitions
    /// are spread over the interval. `0s` turns it off.
    pub reconcile_interval: Dur,
    /// Pages one round may take before it is abandoned as a paging loop (Graph has served
    /// nextLinks that never end on some mailboxes): the round restarts from its deltaLink,
    /// then from scratch; a partition that keeps looping fails with the reason.
    pub max_pages_per_round: u32,
    /// How often a group source's members are listed again (`transitiveMembers`, a listing
    /// from scratch each time: Graph's delta cannot follow transitive membership). At least
    /// `1s`; members who joined or left meanwhile are found at the next listing.
    pub membership_interval: Dur,
}

/// `graph.cloud`: the national cloud, which decides the Graph and login hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cloud {
    /// `global`: the worldwide service.
    Global,
    /// `usgov`: US Government L4 (GCC High).
    Usgov,
    /// `usgov-dod`: US Government L5 (DoD).
    UsgovDod,
    /// `china`: operated by 21Vianet (no To Do delta).
    China,
}

impl Cloud {
    /// The Graph host.
    pub fn graph_host(self) -> &'static str {
        match self {
            Cloud::Global => "https://graph.microsoft.com",
            Cloud::Usgov => "https://graph.microsoft.us",
            Cloud::UsgovDod => "https://dod-graph.microsoft.us",
            Cloud::China => "https://microsoftgraph.chinacloudapi.cn",
        }
    }

    /// The login (token) host.
    pub fn login_host(self) -> &'static str {
        match self {
            Cloud::Global => "https://login.microsoftonline.com",
            Cloud::Usgov | Cloud::UsgovDod => "https://login.microsoftonline.us",
            Cloud::China => "https://login.chinacloudapi.cn",
        }
    }
}

/// How the app authenticates, read from the settings (and files) at load time.
#[derive(Clone)]
pub enum Credentials {
    Secret(Secret),
    Certificate { cert_pem: String, key_pem: Secret },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Secret(_) => f.write_str("Secret(***)"),
            Credentials::Certificate { .. } => f.write_str("Certificate(***)"),
        }
    }
}

impl GraphSettings {
    /// The Graph client's tunables: every one from these settings (whose defaults are in
    /// [`super::DEFAULTS`]), none from `ClientOptions::default()`.
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            page_size: self.page_size,
            // UTC is Graph's own default: no header.
            timezone: Some(self.timezone.clone()).filter(|t| !t.eq_ignore_ascii_case("utc")),
            max_concurrency_per_mailbox: self.max_concurrency_per_mailbox,
            max_concurrency: self.max_concurrency,
            request_timeout: self.request_timeout.0,
            max_retries: self.max_retries,
            base_backoff: self.base_backoff.0,
            max_backoff: self.max_backoff.0,
            batch_polls: self.batch_polls,
            immutable_ids: self.immutable_ids,
            max_response_bytes: self.max_response_bytes,
        }
    }

    /// The Graph host: the override, or the cloud's.
    pub fn graph_base_url(&self) -> String {
        self.base_url
            .as_deref()
            .unwrap_or(self.cloud.graph_host())
            .trim_end_matches('/')
            .to_string()
    }

    /// Whether requests go to Microsoft's Graph: no `base_url`, or one on a Microsoft
    /// domain (`*.microsoft.com`, `*.microsoft.us`, `*.chinacloudapi.cn`), rather than a
    /// simulator. Decides whether `poll_interval` has a floor.
    pub fn is_microsoft_graph(&self) -> bool {
        let Some(u) = &self.base_url else {
            return true;
        };
        // An unparsable URL is refused on its own; the floor applies meanwhile.
        let Some(host) = url::Url::parse(u)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
        else {
            return true;
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        ["microsoft.com", "microsoft.us", "chinacloudapi.cn"]
            .iter()
            .any(|d| host == *d || host.ends_with(&format!(".{d}")))
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        let authority = self
            .authority_url
            .as_deref()
            .unwrap_or(self.cloud.login_host());
        format!(
            "{}/{}/oauth2/v2.0/token",
            authority.trim_end_matches('/'),
            self.tenant_id
        )
    }

    /// Reads the credentials (secret, secret file or certificate files).
    pub fn credentials(&self) -> Result<Credentials, String> {
        let read = |p: &Path, key: &str| {
            std::fs::read_to_string(p)
                .map_err(|e| format!("graph.{key}: cannot read {}: {e}", p.display()))
        };
        match (
            &self.client_secret,
            &self.client_secret_file,
            &self.certificate_path,
            &self.private_key_path,
        ) {
            (Some(s), None, None, None) if !s.expose().is_empty() => Ok(Credentials::Secret(s.clone())),
            (None, Some(f), None, None) => {
                let s = read(f, "client_secret_file")?;
                let s = s.trim();
                if s.is_empty() {
                    return Err(format!("graph.client_secret_file: {} is empty", f.display()));
                }
                Ok(Credentials::Secret(Secret::new(s)))
            }
            (None, None, Some(c), Some(k)) => {
                let cert_pem = read(c, "certificate_path")?;
                if !cert_pem.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(format!("graph.certificate_path: {} is not a PEM certificate", c.display()));
                }
                let key_pem = read(k, "private_key_path")?;
                if !key_pem.contains("PRIVATE KEY-----") {
                    return Err(format!("graph.private_key_path: {} is not a PEM private key", k.display()));
                }
                Ok(Credentials::Certificate { cert_pem, key_pem: Secret::new(key_pem) })
            }
            (None, None, Some(_), None) => Err("graph.private_key_path: required with certificate_path".into()),
            (None, None, None, Some(_)) => Err("graph.certificate_path: required with private_key_path".into()),
            (None, None, None, None) | (Some(_), None, None, None) => Err(
                "graph.client_secret: no credentials: set client_secret, client_secret_file, or certificate_path and private_key_path".into(),
            ),
            _ => Err("graph.client_secret: set exactly one of client_secret, client_secret_file, or certificate_path with private_key_path".into()),
        }
    }
}
