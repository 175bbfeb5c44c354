//! Server-side sync state: the tokens links carry, and the generations Outlook keeps of them.
//!
//! Tokens are random strings naming a [`TokenState`]; links carry nothing else, as Graph's
//! are opaque to clients. Every initial request starts a *chain* (one sync state), and every
//! token issued on it is the chain's next *generation*. Outlook keeps only the newest few:
//! "The sync state generation is not found; generation=149;[highest=157][157][155][156]"
//! (a 410 on a calendarView deltaLink, microsoftgraph/microsoft-graph-docs issue 2350, also
//! microsoft-graph-docs-contrib 7897) and, while paging mail, "generation=518;[highest=523]
//! [523][521][522]" where "the former nextLink will gradually turn to SyncStateNotFound"
//! (microsoft-graph-docs-contrib issue 7975). So a nextLink or deltaLink a few responses old
//! answers 410; how many generations are kept is `SimSettings::sync_state_generations`
//! (3, as both reports show). Independently the whole table is bounded like Outlook's delta
//! token cache ("after the cache capacity is exceeded, the older delta tokens are deleted",
//! concepts/delta-query-overview.md, Token duration).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use rand::Rng;

use super::delta::Query;
use super::model::Seq;

/// Position inside a round: the item `(seq, id)` and how many of its records were sent.
#[derive(Debug, Clone)]
pub struct Cursor {
    pub seq: Seq,
    pub id: Arc<str>,
    pub done: usize,
}

/// The links of a looping round by the page they fetch (`quirks::NextLinkCycle`).
pub type CycleLinks = Arc<Mutex<HashMap<u32, String>>>;

#[derive(Debug, Clone)]
pub struct TokenState {
    pub query: Arc<Query>,
    /// The request path the links are built on (`/v1.0/users/…/delta`).
    pub path: Arc<str>,
    /// The initial request, for the `Location` header of a 410.
    pub initial_url: Arc<str>,
    pub since: Seq,
    pub upto: Seq,
    pub initial: bool,
    /// Set for skip tokens (mid-round); `None` for delta tokens.
    pub cursor: Option<Cursor>,
    /// An item sent earlier this round that may be sent again (replay simulation).
    pub replay: Option<Arc<str>>,
    /// The sync state (chain) the token belongs to: one per initial request.
    pub chain: u64,
    /// The token's generation in its chain, set when it is issued.
    pub generation: u64,
    /// The page of its round this token fetches (1: the round's first).
    pub page: u32,
    /// Whether the chain started with `Prefer: IdType="ImmutableId"` (calendar views only).
    pub immutable_ids: bool,
    /// Set for rounds that loop (a mailbox quirk).
    pub cycle: Option<CycleLinks>,
}

impl TokenState {
    /// The state of an initial request: everything up to `upto`, from its first page.
    pub fn initial(query: Arc<Query>, path: Arc<str>, initial_url: Arc<str>, upto: Seq) -> Self {
        Self {
            query,
            path,
            initial_url,
            since: 0,
            upto,
            initial: true,
            cursor: None,
            replay: None,
            chain: 0,
            generation: 0,
            page: 1,
            immutable_ids: false,
            cycle: None,
        }
    }

    /// The first page of the round a deltaLink starts: the changes since its round, up to `upto`.
    pub fn next_round(&self, upto: Seq) -> Self {
        Self {
            upto,
            initial: false,
            cursor: None,
            replay: None,
            page: 1,
            cycle: None,
            ..self.clone()
        }
    }
}

enum Token {
    Live(TokenState),
    /// Reset by a fault or the control API: answers 410, `Location` the initial request.
    Reset {
        initial_url: Arc<str>,
        chain: u64,
    },
}

impl Token {
    fn chain(&self) -> u64 {
        match self {
            Token::Live(s) => s.chain,
            Token::Reset { chain, .. } => *chain,
        }
    }

    /// Resets a live token; false when it was reset already.
    fn reset(&mut self) -> bool {
        let Token::Live(s) = self else {
            return false;
        };
        *self = Token::Reset {
            initial_url: s.initial_url.clone(),
            chain: s.chain,
        };
        true
    }
}

#[derive(Default)]
struct Chain {
    highest: u64,
    /// Tokens of the chain in the table; the chain is forgotten with its last one.
    tokens: usize,
}

/// All tokens handed out, oldest first, bounded like Outlook's delta token cache.
#[derive(Default)]
pub struct TokenTable {
    tokens: HashMap<String, Token>,
    order: VecDeque<String>,
    chains: HashMap<u64, Chain>,
    next_chain: u64,
}

/// Result of looking up a token.
pub enum Lookup {
    Found(TokenState),
    /// Reset (a fault, `/_sim/evict`): Graph's "synchronization reset".
    Reset(Arc<str>),
    /// Older than the generations its chain keeps.
    Expired {
        generation: u64,
        highest: u64,
        initial_url: Arc<str>,
    },
    /// Never issued or dropped from the cache.
    Unknown,
}

impl TokenTable {
    /// A new sync state, for an initial request.
    pub fn new_chain(&mut self) -> u64 {
        self.next_chain += 1;
        self.next_chain
    }

    /// Stores `state` as its chain's newest generation under a new token.
    pub fn issue(&mut self, mut state: TokenState, capacity: usize) -> String {
        let token = new_token();
        while self.order.len() >= capacity.max(1) {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(t) = self.tokens.remove(&old) {
                self.release(t.chain());
            }
        }
        let chain = self.chains.entry(state.chain).or_default();
        chain.highest += 1;
        chain.tokens += 1;
        state.generation = chain.highest;
        self.order.push_back(token.clone());
        self.tokens.insert(token.clone(), Token::Live(state));
        token
    }

    fn release(&mut self, chain: u64) {
        if let Some(c) = self.chains.get_mut(&chain) {
            c.tokens = c.tokens.saturating_sub(1);
            if c.tokens == 0 {
                self.chains.remove(&chain);
            }
        }
    }

    /// Hands an issued token out again as its chain's newest generation (the links of a
    /// looping round). False when it is no longer known or was reset.
    pub fn restamp(&mut self, token: &str) -> bool {
        let Some(Token::Live(s)) = self.tokens.get_mut(token) else {
            return false;
        };
        let chain = self.chains.entry(s.chain).or_default();
        chain.highest += 1;
        s.generation = chain.highest;
        true
    }

    /// Looks a token up; `keep` generations of its chain are valid (0: all of them).
    pub fn lookup(&self, token: &str, keep: usize) -> Lookup {
        match self.tokens.get(token) {
            Some(Token::Live(s)) => {
                let highest = self.chains.get(&s.chain).map_or(0, |c| c.highest);
                if keep > 0 && highest.saturating_sub(s.generation) >= keep as u64 {
                    Lookup::Expired {
                        generation: s.generation,
                        highest,
                        initial_url: s.initial_url.clone(),
                    }
                } else {
                    Lookup::Found(s.clone())
                }
            }
            Some(Token::Reset { initial_url, .. }) => Lookup::Reset(initial_url.clone()),
            None => Lookup::Unknown,
        }
    }

    /// The state behind a live token, whatever its generation.
    pub fn state(&self, token: &str) -> Option<TokenState> {
        match self.tokens.get(token) {
            Some(Token::Live(s)) => Some(s.clone()),
            _ => None,
        }
    }

    /// Resets one token (a `410` fault on it).
    pub fn evict(&mut self, token: &str) {
        if let Some(t) = self.tokens.get_mut(token) {
            t.reset();
        }
    }

    /// Resets every token of a user (by id), or all tokens; returns how many.
    pub fn evict_user(&mut self, user: Option<&str>) -> usize {
        let mut n = 0;
        for t in self.tokens.values_mut() {
            let theirs = matches!(t, Token::Live(s) if user.is_none_or(|u| u == s.query.user));
            if theirs && t.reset() {
                n += 1;
            }
        }
        n
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// The message of an expired generation, as Exchange words it (see the module comment):
/// the generation asked for, the highest, then the kept ones as `[h][h-k+1]…[h-1]`.
pub fn expired_message(generation: u64, highest: u64, keep: usize) -> String {
    let mut kept = format!("[{highest}]");
    let first = highest.saturating_sub(keep.max(1) as u64 - 1).max(1);
    for g in first..highest {
        kept.push_str(&format!("[{g}]"));
    }
    format!("The sync state generation is not found; generation={generation};[highest={highest}]{kept}.")
}

fn new_token() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    (0..48)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::Resource;

    fn state(chain: u64) -> TokenState {
        let q = Query {
            user: "u".into(),
            resource: Resource::TaskLists,
            select: None,
        };
        let mut s = TokenState::initial(Arc::new(q), "/p".into(), "/p?$deltatoken=".into(), 0);
        s.chain = chain;
        s
    }

    #[test]
    fn a_chain_keeps_its_newest_generations_only() {
        let mut t = TokenTable::default();
        let (a, b) = (t.new_chain(), t.new_chain());
        let first = t.issue(state(a), 100);
        let other = t.issue(state(b), 100);
        assert!(matches!(t.lookup(&first, 3), Lookup::Found(s) if s.generation == 1));
        let second = t.issue(state(a), 100);
        t.issue(state(a), 100);
        assert!(
            matches!(t.lookup(&first, 3), Lookup::Found(_)),
            "1 of [3][1][2]"
        );
        t.issue(state(a), 100);
        match t.lookup(&first, 3) {
            Lookup::Expired {
                generation,
                highest,
                ..
            } => {
                assert_eq!((generation, highest), (1, 4));
                assert_eq!(
                    expired_message(generation, highest, 3),
                    "The sync state generation is not found; generation=1;[highest=4][4][2][3]."
                );
            }
            _ => panic!("generation 1 of 4 is gone"),
        }
        assert!(
            matches!(t.lookup(&first, 0), Lookup::Found(_)),
            "0 keeps all"
        );
        assert!(
            matches!(t.lookup(&other, 3), Lookup::Found(_)),
            "chains apart"
        );
        // Handing a token out again makes it the newest.
        assert!(t.restamp(&second));
        t.issue(state(a), 100);
        t.issue(state(a), 100);
        assert!(matches!(t.lookup(&second, 3), Lookup::Found(s) if s.generation == 5));
        assert!(matches!(t.lookup("nope", 3), Lookup::Unknown));
        t.evict(&second);
        assert!(matches!(t.lookup(&second, 3), Lookup::Reset(_)));
        assert!(!t.restamp(&second));
    }

    #[test]
    fn the_cache_drops_the_oldest_tokens_and_forgets_empty_chains() {
        let mut t = TokenTable::default();
        let a = t.new_chain();
        let first = t.issue(state(a), 2);
        t.issue(state(a), 2);
        t.issue(state(a), 2);
        assert!(matches!(t.lookup(&first, 0), Lookup::Unknown));
        assert_eq!(t.len(), 2);
        let b = t.new_chain();
        t.issue(state(b), 2);
        t.issue(state(b), 2);
        assert!(!t.chains.contains_key(&a), "no token of chain a is left");
    }
}
