//! The block manager: which KV blocks each sequence uses, with reference counts, a free list
//! and the prefix cache.
//!
//! The backend owns the pool's storage; this decides ids. A block is in exactly one state:
//! - *in use*: `refs > 0` (several sequences may share a full block: a prefix hit, `n > 1`);
//! - *cached*: `refs == 0` but it holds a full block of known tokens registered in the prefix
//!   table, evictable least-recently-used;
//! - *free*: `refs == 0`, no content worth keeping.
//!
//! A full block is identified by its tokens and the identity of the block before it (a hash
//! chain), so a hit on block `i` implies the whole prefix `0..=i` matches. Full blocks are
//! never written again, so sharing them needs no copy; only a partial block is copied
//! (copy-on-write) when a sequence forks.
//!
//! Reuse is token-granular, not only block-granular: where the chain of whole-block hits
//! ends, a cached block with the same parent whose first tokens match the prompt's next ones
//! (a shared system prompt that ends mid-block, a chat template's fixed text after it) is
//! copied into the sequence's own next block, and only the tokens after the match are
//! computed. llama-server's slots reuse their last prompt token by token; without this a
//! 16-token block would give up to 15 shared tokens back to prefill on every request.

use lowbit_gpu::NO_BLOCK;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// The identity of a full block: its tokens and the hash of everything before it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct BlockKey {
    parent: u64,
    tokens: Box<[u32]>,
}

impl BlockKey {
    /// The hash the next block in the chain uses as its parent.
    fn chain_hash(&self) -> u64 {
        // SipHash with fixed keys: stable within the process, which is all a cache needs.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }
}

/// Hash of the empty prefix (the parent of a sequence's first block).
const ROOT_HASH: u64 = 0x6c6f_7762_6974_0001;

#[derive(Debug, Clone, Default)]
struct BlockInfo {
    refs: u32,
    /// Set while the block is registered in the prefix table.
    key: Option<BlockKey>,
    /// Tick of its last release, the LRU order of cached blocks.
    released_at: u64,
}

/// What a prompt found in the prefix cache ([`BlockManager::lookup_prefix`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixHit {
    /// Whole blocks reused as they are, each referenced once more: positions
    /// `0..blocks.len() · block_tokens`.
    pub blocks: Vec<u32>,
    /// A cached block whose first tokens continue the match: its keys and values are to be
    /// copied into the sequence's next block. Referenced once more until the caller calls
    /// [`BlockManager::release_source`] after the copy.
    pub partial: Option<PartialHit>,
}

/// The head of a cached block that a prompt shares ([`PrefixHit::partial`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialHit {
    pub source: u32,
    /// Leading positions of `source` that match (at least a quarter block, fewer than a
    /// whole one: a whole match is a chain hit).
    pub tokens: usize,
}

impl PrefixHit {
    /// Positions whose keys and values the hit provides.
    pub fn positions(&self, block_tokens: usize) -> usize {
        self.blocks.len() * block_tokens + self.partial.map_or(0, |p| p.tokens)
    }
}

/// Cached blocks of one parent that a partial lookup compares, newest first: a bound on the
/// work of one admission, whatever the size of the cache.
const PARTIAL_CANDIDATES: usize = 64;

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixStats {
    /// Prompt tokens looked up in the prefix cache.
    pub queried_tokens: u64,
    /// Of those, tokens found (their blocks reused).
    pub hit_tokens: u64,
}

/// Block ids, reference counts and the prefix cache of one KV pool.
#[derive(Debug)]
pub struct BlockManager {
    block_tokens: usize,
    info: Vec<BlockInfo>,
    free: Vec<u32>,
    /// Cached blocks by release tick (oldest first): the eviction order.
    lru: BTreeMap<u64, u32>,
    table: HashMap<BlockKey, u32>,
    /// Registered blocks by their parent's chain hash, oldest first (partial lookups).
    children: HashMap<u64, Vec<u32>>,
    prefix_caching: bool,
    tick: u64,
    stats: PrefixStats,
}

impl BlockManager {
    /// A manager of `blocks` blocks of `block_tokens` positions.
    pub fn new(blocks: usize, block_tokens: usize, prefix_caching: bool) -> Self {
        Self {
            block_tokens,
            info: vec![BlockInfo::default(); blocks],
            // Popped from the end: hand out low ids first (easier to read in traces).
            free: (0..blocks as u32).rev().collect(),
            lru: BTreeMap::new(),
            table: HashMap::new(),
            children: HashMap::new(),
            prefix_caching,
            tick: 0,
            stats: PrefixStats::default(),
        }
    }

    /// Positions per block.
    pub fn block_tokens(&self) -> usize {
        self.block_tokens
    }

    /// Blocks in the pool.
    pub fn total(&self) -> usize {
        self.info.len()
    }

    /// Blocks that an allocation can take now (free or evictable).
    pub fn available(&self) -> usize {
        self.free.len() + self.lru.len()
    }

    /// Blocks in the free list (no content worth keeping).
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Blocks referenced by some sequence.
    pub fn in_use(&self) -> usize {
        self.total() - self.available()
    }

    /// Blocks holding reusable prefixes that no sequence references.
    pub fn cached(&self) -> usize {
        self.lru.len()
    }

    /// Prefix-cache counters so far.
    pub fn stats(&self) -> PrefixStats {
        self.stats
    }

    /// Blocks needed to hold `positions` positions.
    pub fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.block_tokens)
    }

    /// Takes one block for exclusive use, evicting the least recently used cached block if
    /// nothing is free. `None` when every block is in use.
    pub fn allocate(&mut self) -> Option<u32> {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let (_, id) = self.lru.pop_first()?;
                if let Some(key) = self.info[id as usize].key.take() {
                    self.table.remove(&key);
                    if let Some(siblings) = self.children.get_mut(&key.parent) {
                        siblings.retain(|&b| b != id);
                        if siblings.is_empty() {
                            self.children.remove(&key.parent);
                        }
                    }
                }
                id
            }
        };
        self.info[id as usize].refs = 1;
        Some(id)
    }

    /// Grows `table` to cover `positions`, all or nothing: `false` (and `table` unchanged)
    /// when there are not enough blocks.
    pub fn grow(&mut self, table: &mut Vec<u32>, positions: usize) -> bool {
        let need = self.blocks_for(positions).saturating_sub(table.len());
        if need > self.available() {
            return false;
        }
        for _ in 0..need {
            match self.allocate() {
                Some(b) => table.push(b),
                None => return false,
            }
        }
        true
    }

    /// Drops the blocks of `table` past the first `blocks_for(positions)` (those of a
    /// sequence's rejected drafts).
    pub fn truncate(&mut self, table: &mut Vec<u32>, positions: usize) {
        let keep = self.blocks_for(positions);
        while table.len() > keep {
            if let Some(id) = table.pop() {
                self.release_one(id);
            }
        }
    }

    /// Whether `grow` of a table of `held` blocks to `positions` would succeed.
    pub fn can_grow(&self, held: usize, positions: usize) -> bool {
        self.blocks_for(positions).saturating_sub(held) <= self.available()
    }

    /// [`Self::grow`] from the free list alone, evicting no cached block (for speculative
    /// drafts, which may be rejected).
    pub fn grow_from_free(&mut self, table: &mut Vec<u32>, positions: usize) -> bool {
        let need = self.blocks_for(positions).saturating_sub(table.len());
        if need > self.free.len() {
            return false;
        }
        for _ in 0..need {
            if let Some(id) = self.free.pop() {
                self.info[id as usize].refs = 1;
                table.push(id);
            }
        }
        true
    }

    /// Adds a reference to a block already in use (a fork sharing a full block).
    pub fn share(&mut self, id: u32) {
        let info = &mut self.info[id as usize];
        debug_assert!(info.refs > 0, "sharing a block nobody holds");
        info.refs += 1;
    }

    /// Drops one reference to each block of `table` and empties it. A block nobody holds any
    /// more becomes cached (if registered) or free.
    pub fn release(&mut self, table: &mut Vec<u32>) {
        for id in std::mem::take(table) {
            self.release_one(id);
        }
    }

    /// Drops one reference to block `id` ([`NO_BLOCK`]: nothing).
    pub(super) fn release_one(&mut self, id: u32) {
        if id == NO_BLOCK {
            return;
        }
        let info = &mut self.info[id as usize];
        debug_assert!(info.refs > 0, "releasing block {id} twice");
        info.refs = info.refs.saturating_sub(1);
        if info.refs == 0 {
            if info.key.is_some() {
                self.tick += 1;
                info.released_at = self.tick;
                self.lru.insert(self.tick, id);
            } else {
                self.free.push(id);
            }
        }
    }

    /// The chain of keys of the full blocks of `tokens` (first `count` blocks).
    pub(super) fn keys(&self, tokens: &[u32], count: usize) -> Vec<BlockKey> {
        let mut parent = ROOT_HASH;
        tokens
            .chunks_exact(self.block_tokens)
            .take(count)
            .map(|chunk| {
                let key = BlockKey {
                    parent,
                    tokens: chunk.into(),
                };
                parent = key.chain_hash();
                key
            })
            .collect()
    }

    /// Looks up the longest cached prefix of `tokens`, leaving at least one token to compute
    /// (its logits are what the sequence needs next): whole blocks of the chain, then the
    /// head of a cached block that continues it (module doc). Every block returned is
    /// referenced once more.
    pub fn lookup_prefix(&mut self, tokens: &[u32]) -> PrefixHit {
        if !self.prefix_caching || tokens.is_empty() {
            return PrefixHit::default();
        }
        self.stats.queried_tokens += tokens.len() as u64;
        let bt = self.block_tokens;
        let max_blocks = (tokens.len() - 1) / bt;
        let mut hit = PrefixHit::default();
        let mut parent = ROOT_HASH;
        for key in self.keys(tokens, max_blocks) {
            let Some(&id) = self.table.get(&key) else {
                break;
            };
            self.take_ref(id);
            hit.blocks.push(id);
            parent = key.chain_hash();
        }
        // The next block's tokens, short of the last token of the prompt.
        let start = hit.blocks.len() * bt;
        let next = &tokens[start..(start + bt).min(tokens.len() - 1)];
        if let Some(partial) = self.best_partial(parent, next) {
            self.take_ref(partial.source);
            hit.partial = Some(partial);
        }
        self.stats.hit_tokens += hit.positions(bt) as u64;
        hit
    }

    /// The cached child of `parent` sharing the longest head with `next` (ties: the newest).
    fn best_partial(&self, parent: u64, next: &[u32]) -> Option<PartialHit> {
        let siblings = self.children.get(&parent)?;
        let mut best: Option<PartialHit> = None;
        for &id in siblings.iter().rev().take(PARTIAL_CANDIDATES) {
            let Some(key) = &self.info[id as usize].key else {
                continue;
            };
            let shared = key
                .tokens
                .iter()
                .zip(next)
                .take_while(|(a, b)| a == b)
                .count();
            if shared >= self.min_partial() && best.is_none_or(|b| shared > b.tokens) {
                best = Some(PartialHit {
                    source: id,
                    tokens: shared,
                });
            }
        }
        best
    }

    /// The shortest head worth a whole block's copy: a quarter block. Shorter matches are
    /// mostly a prompt's first token (BOS, the template's opening) shared with everything.
    fn min_partial(&self) -> usize {
        (self.block_tokens / 4).max(1)
    }

    /// The block registered under `key`, in use or cached.
    pub(super) fn registered(&self, key: &BlockKey) -> Option<u32> {
        self.table.get(key).copied()
    }

    /// The key block `id` is registered under.
    pub(super) fn key_of(&self, id: u32) -> Option<&BlockKey> {
        self.info.get(id as usize)?.key.as_ref()
    }

    /// One more reference to a registered block (taking it out of the eviction order).
    pub(super) fn take_ref(&mut self, id: u32) {
        let info = &mut self.info[id as usize];
        if info.refs == 0 {
            self.lru.remove(&info.released_at);
        }
        info.refs += 1;
    }

    /// Takes back what [`BlockManager::lookup_prefix`] counted of a lookup whose hit was not
    /// used (the request goes back to the queue, or gives up its partial hit).
    pub fn uncount_lookup(&mut self, queried: usize, hit: usize) {
        self.stats.queried_tokens = self.stats.queried_tokens.saturating_sub(queried as u64);
        self.stats.hit_tokens = self.stats.hit_tokens.saturating_sub(hit as u64);
    }

    /// Drops a reference a lookup took and did not use, leaving a block that nobody else
    /// holds where it was in the eviction order (a hit cut short must not make the blocks
    /// past the cut look recently used).
    pub(super) fn give_back(&mut self, id: u32) {
        let info = &mut self.info[id as usize];
        debug_assert!(info.refs > 0, "giving back block {id} twice");
        info.refs = info.refs.saturating_sub(1);
        if info.refs == 0 {
            if info.key.is_some() {
                // Its tick left the order when the lookup took it, and ticks are unique.
                self.lru.insert(info.released_at, id);
            } else {
                self.free.push(id);
            }
        }
    }

    /// Drops the reference a [`PartialHit`] held on its source, once the copy is made (or
    /// given up).
    pub fn release_source(&mut self, source: u32) {
        self.release_one(source);
    }

    /// Registers the full blocks of a sequence whose positions `0..computed` are written, so
    /// later requests can reuse them. `table[i]` holds positions of block `i`. A block whose
    /// prefix is already registered under another id stays unregistered (the first copy
    /// serves later hits).
    pub fn register_full_blocks(&mut self, tokens: &[u32], table: &[u32], computed: usize) {
        if !self.prefix_caching {
            return;
        }
        let full = (computed / self.block_tokens).min(table.len());
        for (key, &id) in self.keys(tokens, full).into_iter().zip(table) {
            // A block given back (slid out of a window) holds nothing to register.
            if id == NO_BLOCK || self.info[id as usize].key.is_some() {
                continue;
            }
            if self.table.contains_key(&key) {
                continue;
            }
            self.table.insert(key.clone(), id);
            self.children.entry(key.parent).or_default().push(id);
            self.info[id as usize].key = Some(key);
        }
    }

    /// Whether every block is back in the free list or the cache with no reference left (for
    /// tests and the soak check: nothing leaked).
    pub fn all_released(&self) -> bool {
        self.info.iter().all(|i| i.refs == 0) && self.available() == self.total()
    }

    /// Reference count of a block (tests).
    pub fn refs(&self, id: u32) -> u32 {
        self.info[id as usize].refs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_release_and_exhaustion() {
        let mut m = BlockManager::new(4, 16, true);
        let mut a = Vec::new();
        assert!(m.grow(&mut a, 40));
        assert_eq!(a.len(), 3);
        assert_eq!(m.available(), 1);
        let mut b = Vec::new();
        // All or nothing: 2 blocks asked, 1 available.
        assert!(!m.grow(&mut b, 17));
        assert!(b.is_empty());
        assert_eq!(m.available(), 1);
        m.release(&mut a);
        assert!(a.is_empty());
        assert!(m.all_released());
        assert!(m.grow(&mut b, 64));
        assert_eq!(m.available(), 0);
        assert_eq!(m.allocate(), None);
    }

    #[test]
    fn drafts_grow_from_free_blocks_only_and_truncate_gives_them_back() {
        let mut m = BlockManager::new(4, 4, true);
        // Two cached blocks (a finished prompt), two free.
        let cached: Vec<u32> = (0..8).collect();
        let mut t = Vec::new();
        assert!(m.grow(&mut t, 8));
        m.register_full_blocks(&cached, &t, 8);
        m.release(&mut t);
        assert_eq!((m.cached(), m.available()), (2, 4));
        let mut seq = Vec::new();
        assert!(
            !m.grow_from_free(&mut seq, 12),
            "would evict a cached block"
        );
        assert!(seq.is_empty());
        assert!(m.grow_from_free(&mut seq, 8));
        assert_eq!((seq.len(), m.cached()), (2, 2));
        // Rejected drafts: back to one block.
        m.truncate(&mut seq, 3);
        assert_eq!((seq.len(), m.available()), (1, 3));
        m.release(&mut seq);
        assert_eq!(m.cached(), 2);
        assert!(m.all_released());
    }

    #[test]
    fn prefix_hits_share_blocks_and_leave_one_token_to_compute() {
        let mut m = BlockManager::new(8, 4, true);
        let prompt: Vec<u32> = (0..10).collect();
        let mut a = Vec::new();
        assert!(m.grow(&mut a, prompt.len()));
        m.register_full_blocks(&prompt, &a, prompt.len());
        // Same prompt: two full blocks hit (positions 0..8), the partial third one does not.
        let hit = m.lookup_prefix(&prompt);
        assert_eq!(hit.blocks, a[..2]);
        assert_eq!(hit.partial, None);
        assert_eq!(m.refs(a[0]), 2);
        // A prompt of exactly two blocks: the first hits whole, three tokens of the second
        // are copied (one token left to compute).
        let hit2 = m.lookup_prefix(&prompt[..8]);
        assert_eq!(hit2.blocks, a[..1]);
        let p2 = PartialHit {
            source: a[1],
            tokens: 3,
        };
        assert_eq!(hit2.partial, Some(p2));
        assert_eq!(hit2.positions(4), 7);
        // A different second block from its second token on: the chain stops after the
        // first block, and the second block's first token is shared.
        let mut other = prompt.clone();
        other[5] = 99;
        let hit3 = m.lookup_prefix(&other);
        assert_eq!(hit3.blocks, a[..1]);
        assert_eq!(hit3.partial.map(|p| p.tokens), Some(1));
        let sources = [a_source(&hit2), a_source(&hit3)];
        assert_eq!(m.stats().queried_tokens, 28);
        assert_eq!(m.stats().hit_tokens, 8 + 7 + 5);
        for mut t in [a, hit.blocks, hit2.blocks, hit3.blocks] {
            m.release(&mut t);
        }
        assert!(!m.all_released(), "the partial sources are still held");
        for source in sources {
            m.release_source(source);
        }
        assert!(m.all_released());
        assert_eq!(m.cached(), 2);
    }

    fn a_source(hit: &PrefixHit) -> u32 {
        hit.partial.expect("a partial hit").source
    }

    #[test]
    fn partial_hits_take_the_longest_head_and_survive_eviction_bookkeeping() {
        let mut m = BlockManager::new(6, 4, true);
        // Two cached prompts sharing their first block, differing inside the second.
        let x: Vec<u32> = vec![1, 2, 3, 4, 5, 6, 7, 8, 0];
        let y: Vec<u32> = vec![1, 2, 3, 4, 5, 6, 9, 9, 0];
        let (mut a, mut b) = (Vec::new(), Vec::new());
        assert!(m.grow(&mut a, x.len()));
        m.register_full_blocks(&x, &a, x.len());
        m.release(&mut a);
        assert!(m.grow(&mut b, y.len()));
        m.register_full_blocks(&y, &b, y.len());
        m.release(&mut b);
        // [1 2 3 4][5 6 7 …] matches x's second block for three tokens, y's for two.
        let q = vec![1, 2, 3, 4, 5, 6, 7, 1, 1, 1];
        let hit = m.lookup_prefix(&q);
        assert_eq!(hit.blocks.len(), 1);
        let p = hit.partial.expect("partial hit");
        assert_eq!(p.tokens, 3);
        assert_eq!(m.refs(p.source), 1);
        let mut blocks = hit.blocks;
        m.release(&mut blocks);
        m.release_source(p.source);
        assert!(m.all_released());
        // Evicting every cached block leaves no stale candidate behind.
        let mut all = Vec::new();
        assert!(m.grow(&mut all, 24));
        m.release(&mut all);
        assert!(m.lookup_prefix(&q).blocks.is_empty());
        assert!(m.children.is_empty());
    }

    #[test]
    fn a_partial_hit_needs_a_quarter_block() {
        let mut m = BlockManager::new(4, 16, true);
        let cached: Vec<u32> = (1..=17).collect();
        let mut a = Vec::new();
        assert!(m.grow(&mut a, cached.len()));
        m.register_full_blocks(&cached, &a, cached.len());
        m.release(&mut a);
        // Three shared tokens (a BOS and a template's opening, say): not worth a copy.
        let short: Vec<u32> = [1, 2, 3].into_iter().chain(100..120).collect();
        assert_eq!(m.lookup_prefix(&short), PrefixHit::default());
        let four: Vec<u32> = [1, 2, 3, 4].into_iter().chain(100..120).collect();
        let hit = m.lookup_prefix(&four);
        assert_eq!(hit.partial.map(|p| p.tokens), Some(4));
        m.release_source(hit.partial.expect("a partial hit").source);
        assert!(m.all_released());
    }

    #[test]
    fn cached_blocks_are_evicted_least_recently_used() {
        let mut m = BlockManager::new(3, 2, true);
        let (x, y): (Vec<u32>, Vec<u32>) = (vec![1, 2, 3], vec![7, 8, 9]);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        assert!(m.grow(&mut a, 3));
        m.register_full_blocks(&x, &a, 3);
        m.release(&mut a); // block of [1,2] cached, the partial one free
        assert!(m.grow(&mut b, 3));
        m.register_full_blocks(&y, &b, 3);
        m.release(&mut b);
        assert_eq!(m.cached(), 2);
        // One free block, then the oldest cached ([1,2]) goes first.
        let mut c = Vec::new();
        assert!(m.grow(&mut c, 4));
        assert_eq!(m.lookup_prefix(&x), PrefixHit::default());
        let hit = m.lookup_prefix(&y);
        assert_eq!(hit.blocks.len(), 1);
        m.release(&mut c);
        m.release(&mut hit.blocks.clone());
        assert!(m.all_released());
    }

    #[test]
    fn disabled_cache_never_hits() {
        let mut m = BlockManager::new(4, 2, false);
        let t = vec![1, 2, 3, 4, 5];
        let mut a = Vec::new();
        assert!(m.grow(&mut a, 5));
        m.register_full_blocks(&t, &a, 5);
        m.release(&mut a);
        assert_eq!(m.lookup_prefix(&t), PrefixHit::default());
        assert_eq!(m.cached(), 0);
        assert_eq!(m.stats(), PrefixStats::default());
    }
}
