//! Rolling windows and the periodic reconcile (issue 12, items 1 and 4).
