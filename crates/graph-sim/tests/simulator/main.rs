//! The Graph simulator over real HTTP: delta rounds, faults, auth, control API, change
//! notifications.

mod auth;
mod calendars;
mod client;
mod delta;
mod faults;
mod groups;
mod lifecycle;
mod notifications;
mod subscription_access;
mod subscriptions;
mod sync_state;
mod users;
mod webhook;
