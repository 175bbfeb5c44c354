//! The Graph simulator over real HTTP: delta rounds, faults, auth, control API.

mod auth;
mod calendars;
mod client;
mod delta;
mod faults;
mod groups;
mod sync_state;
mod users;
