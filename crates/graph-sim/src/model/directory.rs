//! The directory beside the mailboxes: user renames and mailbox switches, security groups
//! with nested members, and the application permissions each app registration holds.
//!
//! A group's direct members are kept with the change stamp of their last addition or removal,
//! and removed ones stay as tombstones, so `/groups/delta` can report `members@delta` changes
//! since a round the way mailbox collections report theirs. Transitive membership is computed
//! on demand: `/groups/delta` expresses only direct membership (concepts/delta-query-groups.md,
//! and the Microsoft Q&A "Is there any way to get delta of child group members…", 848352:
//! "transitiveMembers … is not supported by the delta API"), so clients list
//! `transitiveMembers/microsoft.graph.user` instead.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::{Seq, Store, UserInfo};
use crate::permissions::DEFAULT_ROLES;
use crate::SimError;

/// What a group member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MemberKind {
    User,
    Group,
}

impl MemberKind {
    /// The OData type Graph names members with (`@odata.type`).
    pub fn odata_type(self) -> &'static str {
        match self {
            MemberKind::User => "#microsoft.graph.user",
            MemberKind::Group => "#microsoft.graph.group",
        }
    }
}

/// A direct membership: live, or removed at `seq` (kept for `/groups/delta`).
#[derive(Debug, Clone)]
pub struct Membership {
    pub kind: MemberKind,
    pub seq: Seq,
    pub live: bool,
}

/// A security group.
#[derive(Debug)]
pub struct Group {
    pub id: String,
    pub tenant: String,
    pub display_name: String,
    pub mail_nickname: String,
    /// Stamp of its creation and, once deleted, of its deletion.
    pub created: Seq,
    pub deleted: Option<Seq>,
    /// Direct members by id.
    pub members: BTreeMap<String, Membership>,
}

impl Group {
    pub fn live_members(&self) -> impl Iterator<Item = (&String, &Membership)> {
        self.members.iter().filter(|(_, m)| m.live)
    }
}

/// `POST /_sim/groups`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GroupSpec {
    /// Defaults to `default`.
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
    /// Initial members: user ids or UPNs, or group ids.
    #[serde(default)]
    pub members: Vec<String>,
}

/// A group as the control API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupInfo {
    pub id: String,
    pub display_name: String,
    pub tenant: String,
    /// Direct members: `{"id", "kind"}`.
    pub members: Vec<MemberInfo>,
    /// Ids of every user reachable through nested groups, each once, sorted.
    pub transitive_users: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: String,
    pub kind: MemberKind,
}

/// `PATCH /_sim/users/{u}`: a rename (new UPN, new mail; the id stays) and the mailbox switch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UserPatch {
    #[serde(default)]
    pub user_principal_name: Option<String>,
    /// Defaults to the new UPN when the UPN changes.
    #[serde(default)]
    pub mail: Option<String>,
    /// `false`: no Exchange Online mailbox (no license): its mailbox endpoints answer
    /// `404 MailboxNotEnabledForRESTAPI`.
    #[serde(default)]
    pub mailbox: Option<bool>,
}

fn roles_key(tenant: &str, client_id: &str) -> String {
    format!("{tenant}/{client_id}")
}

impl Store {
    /// Renames and/or switches a user's mailbox. A rename frees the old UPN (it no longer
    /// resolves anywhere) and keeps the id and every mailbox item as they are.
    pub fn patch_user(&mut self, key: &str, p: UserPatch) -> Result<UserInfo, SimError> {
        let id = self.user(key)?.id.clone();
        if let Some(upn) = &p.user_principal_name {
            if upn.trim().is_empty() || !upn.contains('@') {
                return Err(SimError::BadRequest(format!("'{upn}' is not a UPN")));
            }
            if self.user_id(upn).is_some_and(|other| other != id) {
                return Err(SimError::Conflict(format!("user {upn} exists")));
            }
            let old = self.user(&id)?.upn.to_lowercase();
            self.upns.remove(&old);
            self.upns.insert(upn.to_lowercase(), id.clone());
        }
        let u = self.user_mut(&id)?;
        if let Some(upn) = p.user_principal_name {
            u.mail = Some(p.mail.clone().unwrap_or_else(|| upn.clone()));
            u.upn = upn;
        } else if let Some(mail) = p.mail {
            u.mail = Some(mail);
        }
        if let Some(m) = p.mailbox {
            u.mailbox = m;
        }
        self.user_info(&id)
    }

    /// A live group by id (GUIDs compare case-insensitively).
    pub fn group(&self, id: &str) -> Result<&Group, SimError> {
        self.groups
            .get(id)
            .or_else(|| self.groups.get(&id.to_ascii_lowercase()))
            .filter(|g| g.deleted.is_none())
            .ok_or_else(|| SimError::NotFound(format!("group {id}")))
    }

    fn group_mut(&mut self, id: &str) -> Result<&mut Group, SimError> {
        let key = self.group(id)?.id.clone();
        self.groups
            .get_mut(&key)
            .ok_or_else(|| SimError::NotFound(format!("group {id}")))
    }

    pub fn create_group(&mut self, spec: GroupSpec) -> Result<GroupInfo, SimError> {
        let tenant = spec.tenant.unwrap_or_else(|| "default".into());
        let id = spec
            .id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
            .to_ascii_lowercase();
        if self.groups.contains_key(&id) {
            return Err(SimError::Conflict(format!("group {id} exists")));
        }
        let display_name = spec
            .display_name
            .unwrap_or_else(|| format!("Group {}", &id[..8.min(id.len())]));
        let mail_nickname: String = display_name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let created = self.next_seq();
        self.tenants.entry(tenant.clone()).or_default();
        self.groups.insert(
            id.clone(),
            Group {
                id: id.clone(),
                tenant,
                display_name,
                mail_nickname,
                created,
                deleted: None,
                members: BTreeMap::new(),
            },
        );
        for m in &spec.members {
            self.add_member(&id, m)?;
        }
        self.group_info(&id)
    }

    /// A member key (a group id, or a user id or UPN) in `tenant`, as stored.
    fn resolve_member(&self, tenant: &str, key: &str) -> Result<(String, MemberKind), SimError> {
        if let Ok(g) = self.group(key) {
            if g.tenant == tenant {
                return Ok((g.id.clone(), MemberKind::Group));
            }
        }
        match self.user(key) {
            Ok(u) if u.tenant == tenant => Ok((u.id.clone(), MemberKind::User)),
            _ => Err(SimError::NotFound(format!("user or group {key}"))),
        }
    }

    /// Adds a user or a group as a direct member (`409` when it is one already).
    pub fn add_member(&mut self, group: &str, member: &str) -> Result<(), SimError> {
        let (gid, tenant) = {
            let g = self.group(group)?;
            (g.id.clone(), g.tenant.clone())
        };
        let (mid, kind) = self.resolve_member(&tenant, member)?;
        if mid == gid {
            return Err(SimError::BadRequest(
                "a group cannot be its own member".into(),
            ));
        }
        if self.group(&gid)?.members.get(&mid).is_some_and(|m| m.live) {
            return Err(SimError::Conflict(format!("{mid} is a member of {gid}")));
        }
        let seq = self.next_seq();
        self.group_mut(&gid)?.members.insert(
            mid,
            Membership {
                kind,
                seq,
                live: true,
            },
        );
        Ok(())
    }

    /// Removes a direct member (`404` when it is none).
    pub fn remove_member(&mut self, group: &str, member: &str) -> Result<(), SimError> {
        let gid = self.group(group)?.id.clone();
        // A deleted user or group can still be named by the id it had.
        let mid = {
            let g = self.group(&gid)?;
            let tenant = g.tenant.clone();
            match self.resolve_member(&tenant, member) {
                Ok((id, _)) => id,
                Err(_) => member.to_string(),
            }
        };
        let seq = self.next_seq();
        match self.group_mut(&gid)?.members.get_mut(&mid) {
            Some(m) if m.live => {
                m.live = false;
                m.seq = seq;
                Ok(())
            }
            _ => Err(SimError::NotFound(format!(
                "member {member} of group {gid}"
            ))),
        }
    }

    /// Deletes a user permanently, with its mailbox: its id no longer resolves (`/users/{id}`
    /// answers `404 Request_ResourceNotFound`; its mailbox and To Do routes `404
    /// ErrorInvalidUser` "The requested user '…' is invalid.", as Exchange answers for a user
    /// it does not know: microsoftgraph/microsoft-graph-explorer-v4 issue 3293, a deleted
    /// user), its memberships end (Entra removes a deleted user from its groups), and its
    /// principal name is free for a new account (after the 30 days a soft-deleted user keeps
    /// it, or a permanent delete).
    pub fn delete_user(&mut self, key: &str) -> Result<(), SimError> {
        let id = self.user(key)?.id.clone();
        if let Some(u) = self.users.remove(&id) {
            self.upns.remove(&u.upn.to_lowercase());
        }
        let seq = self.next_seq();
        for g in self.groups.values_mut().filter(|g| g.deleted.is_none()) {
            if let Some(m) = g.members.get_mut(&id).filter(|m| m.live) {
                m.live = false;
                m.seq = seq;
            }
        }
        Ok(())
    }

    /// Deletes a group (permanently, as a security group is) and its memberships in others.
    pub fn delete_group(&mut self, id: &str) -> Result<(), SimError> {
        let gid = self.group(id)?.id.clone();
        let seq = self.next_seq();
        self.group_mut(&gid)?.deleted = Some(seq);
        for g in self.groups.values_mut().filter(|g| g.deleted.is_none()) {
            if let Some(m) = g.members.get_mut(&gid).filter(|m| m.live) {
                m.live = false;
                m.seq = seq;
            }
        }
        Ok(())
    }

    /// Every user and group reachable from `group` through live nested memberships, each
    /// once (a user reached twice, or a cycle of groups, yields each once), in id order.
    pub fn transitive_members(&self, group: &str) -> Result<Vec<(String, MemberKind)>, SimError> {
        let root = self.group(group)?.id.clone();
        let mut seen: HashSet<String> = HashSet::from([root.clone()]);
        let mut out = BTreeMap::new();
        let mut queue = VecDeque::from([root]);
        while let Some(gid) = queue.pop_front() {
            let Ok(g) = self.group(&gid) else { continue };
            for (mid, m) in g.live_members() {
                if m.kind == MemberKind::Group {
                    if self.group(mid).is_err() || !seen.insert(mid.clone()) {
                        continue;
                    }
                    queue.push_back(mid.clone());
                }
                out.insert(mid.clone(), m.kind);
            }
        }
        Ok(out.into_iter().collect())
    }

    /// The ids of the users reachable from `group`, each once, sorted.
    pub fn transitive_users(&self, group: &str) -> Result<Vec<String>, SimError> {
        Ok(self
            .transitive_members(group)?
            .into_iter()
            .filter(|(_, k)| *k == MemberKind::User)
            .map(|(id, _)| id)
            .collect())
    }

    pub fn group_info(&self, id: &str) -> Result<GroupInfo, SimError> {
        let g = self.group(id)?;
        Ok(GroupInfo {
            id: g.id.clone(),
            display_name: g.display_name.clone(),
            tenant: g.tenant.clone(),
            members: g
                .live_members()
                .map(|(id, m)| MemberInfo {
                    id: id.clone(),
                    kind: m.kind,
                })
                .collect(),
            transitive_users: self.transitive_users(&g.id)?,
        })
    }

    /// Live groups, in id order.
    pub fn group_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .groups
            .values()
            .filter(|g| g.deleted.is_none())
            .map(|g| g.id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// The application permissions (`roles`) an app holds: what was set for it, or every
    /// permission graph-cdc needs ([`DEFAULT_ROLES`]).
    pub fn app_roles(&self, tenant: &str, client_id: &str) -> BTreeSet<String> {
        match self.roles.get(&roles_key(tenant, client_id)) {
            Some(r) => r.clone(),
            None => DEFAULT_ROLES.iter().map(|r| r.to_string()).collect(),
        }
    }

    /// Sets (or with `None` resets to the default) an app's roles in `tenant`, or in every
    /// tenant it is registered in; `404` when it is registered nowhere that matches.
    pub fn set_app_roles(
        &mut self,
        tenant: Option<&str>,
        client_id: &str,
        roles: Option<Vec<String>>,
    ) -> Result<usize, SimError> {
        let tenants: Vec<String> = self
            .tenants
            .iter()
            .filter(|(t, v)| tenant.is_none_or(|w| w == *t) && v.clients.contains_key(client_id))
            .map(|(t, _)| t.clone())
            .collect();
        if tenants.is_empty() {
            return Err(SimError::NotFound(format!("client {client_id}")));
        }
        for t in &tenants {
            let key = roles_key(t, client_id);
            match &roles {
                Some(r) => {
                    self.roles.insert(key, r.iter().cloned().collect());
                }
                None => {
                    self.roles.remove(&key);
                }
            }
        }
        Ok(tenants.len())
    }
}

#[cfg(test)]
mod tests {
    use super::super::UserSpec;
    use super::*;

    fn user(s: &mut Store, upn: &str) -> String {
        s.create_user(UserSpec {
            tenant: None,
            user_principal_name: upn.into(),
            id: None,
            display_name: None,
        })
        .unwrap()
        .id
    }

    fn group(s: &mut Store, members: &[&str]) -> String {
        let spec = GroupSpec {
            members: members.iter().map(|m| m.to_string()).collect(),
            ..Default::default()
        };
        s.create_group(spec).unwrap().id
    }

    #[test]
    fn nested_members_are_reached_once_and_cycles_end() {
        let mut s = Store::default();
        let a = user(&mut s, "a@contoso.com");
        let b = user(&mut s, "b@contoso.com");
        let inner = group(&mut s, &["a@contoso.com", "b@contoso.com"]);
        let outer = group(&mut s, &[&a, &inner]);
        s.add_member(&inner, &outer).unwrap();
        let mut want = vec![a.clone(), b.clone()];
        want.sort();
        assert_eq!(s.transitive_users(&outer).unwrap(), want);
        assert_eq!(s.transitive_users(&inner).unwrap(), want);
        assert!(matches!(
            s.add_member(&outer, "A@CONTOSO.COM"),
            Err(SimError::Conflict(_))
        ));
        s.delete_group(&inner).unwrap();
        assert_eq!(s.transitive_users(&outer).unwrap(), vec![a]);
        assert!(s.group(&inner).is_err());
    }

    #[test]
    fn a_rename_frees_the_old_name_and_keeps_the_id() {
        let mut s = Store::default();
        let id = user(&mut s, "old@contoso.com");
        user(&mut s, "taken@contoso.com");
        let taken = UserPatch {
            user_principal_name: Some("Taken@contoso.com".into()),
            ..Default::default()
        };
        assert!(matches!(
            s.patch_user(&id, taken),
            Err(SimError::Conflict(_))
        ));
        let p = UserPatch {
            user_principal_name: Some("New@contoso.com".into()),
            ..Default::default()
        };
        let info = s.patch_user("OLD@contoso.com", p).unwrap();
        assert_eq!(info.id, id);
        assert_eq!(s.user_id("new@contoso.com"), Some(id.as_str()));
        assert!(s.user_id("old@contoso.com").is_none());
        assert_eq!(
            s.user(&id).unwrap().mail.as_deref(),
            Some("New@contoso.com")
        );
    }
}
