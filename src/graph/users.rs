//! Users as the directory knows them: a configured user (principal name or object id)
//! resolved to its object id, which never changes, and its current principal name, which
//! may (a marriage, a domain change).
//!
//! `GET /v1.0/users/{id | userPrincipalName}?$select=id,userPrincipalName,mail` (Graph's
//! "Get user"; application permission `User.Read.All`, or `User.ReadBasic.All`). An unknown
//! user answers `404 Request_ResourceNotFound`.

use url::Url;

use super::client::GraphClient;
use super::error::GraphError;

/// A user of the directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryUser {
    /// The object id: what partitions and record keys carry.
    pub id: String,
    #[serde(default)]
    pub user_principal_name: Option<String>,
    #[serde(default)]
    pub mail: Option<String>,
}

/// The lookup of `user` (a principal name or an object id) on `graph_host`.
pub fn lookup_url(graph_host: &str, user: &str) -> Result<String, GraphError> {
    let mut url = Url::parse(graph_host).map_err(|source| GraphError::Host {
        host: graph_host.to_string(),
        source,
    })?;
    url.path_segments_mut()
        .map_err(|_| GraphError::Url(format!("{graph_host} cannot be a base URL")))?
        .pop_if_empty()
        .extend(["v1.0", "users", user]);
    url.query_pairs_mut()
        .append_pair("$select", "id,userPrincipalName,mail");
    Ok(url.to_string())
}

/// Looks `user` up (retrying what Graph says to retry, as for a page). A `404` is
/// [`GraphError::Client`] with Graph's code: the user does not exist (or no longer).
pub async fn lookup(
    client: &GraphClient,
    graph_host: &str,
    user: &str,
) -> Result<DirectoryUser, GraphError> {
    let url = lookup_url(graph_host, user)?;
    let found: DirectoryUser = client.get_json(user, None, &url).await?;
    if found.id.trim().is_empty() {
        return Err(GraphError::Url(format!(
            "user '{user}': Graph answered no id"
        )));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::graph::http::testing::{token_provider, Answer, Server};
    use crate::graph::ClientOptions;

    fn client(login: &str) -> GraphClient {
        let opts = ClientOptions {
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            max_retries: 2,
            ..ClientOptions::default()
        };
        let http = crate::graph::http::client(&opts).expect("client");
        GraphClient::new(http, Arc::new(token_provider(login, "s3cr3t", &opts)), opts)
    }

    #[test]
    fn the_lookup_selects_what_keys_need_and_escapes_the_name() {
        let u = lookup_url("https://graph.microsoft.com", "o'brien#1@contoso.com").unwrap();
        assert_eq!(
            u,
            "https://graph.microsoft.com/v1.0/users/o'brien%231@contoso.com?%24select=id%2CuserPrincipalName%2Cmail"
        );
    }

    #[tokio::test]
    async fn a_user_is_found_by_name_and_an_unknown_one_says_so() {
        let login = Server::start(vec![], Answer::token("t")).await;
        let alice = r#"{"@odata.context":"…/$metadata#users(id,userPrincipalName,mail)/$entity","id":"0b1c6a2e-0000-4000-8000-000000000001","userPrincipalName":"alice@contoso.com","mail":"alice@contoso.com"}"#;
        let missing = r#"{"error":{"code":"Request_ResourceNotFound","message":"Resource 'bob@contoso.com' does not exist or one of its queried reference-property objects are not present."}}"#;
        let graph = Server::start(
            vec![
                Answer::json(503, "{}"),
                Answer::json(200, alice),
                Answer::json(404, missing),
            ],
            Answer::json(500, "{}"),
        )
        .await;
        let c = client(&login.url);
        let found = lookup(&c, &graph.url, "alice@contoso.com").await.unwrap();
        assert_eq!(found.id, "0b1c6a2e-0000-4000-8000-000000000001");
        assert_eq!(
            found.user_principal_name.as_deref(),
            Some("alice@contoso.com")
        );
        match lookup(&c, &graph.url, "bob@contoso.com").await {
            Err(GraphError::Client { status, code, .. }) => {
                assert_eq!((status, code.as_str()), (404, "Request_ResourceNotFound"))
            }
            other => panic!("{other:?}"),
        }
    }
}
