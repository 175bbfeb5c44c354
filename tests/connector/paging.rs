//! Graph's paging faults (issue 12, item 7): see `src/graph/guard.rs`.
