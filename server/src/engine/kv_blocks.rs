//! The block tables of both KV pools: the main one (every layer, or the layers that attend to
//! everything) and, for a model whose other layers slide, the window pool
//! ([`lowbit_gpu::KvPool::with_window`]).
//!
//! A sequence's two tables cover the same positions, block for block, and every operation
//! (grow, truncate, release, the prefix cache, forks) acts on both, all or nothing. The window
//! table's entries before the first position the sequence's next row sees are given back as
//! it advances ([`KvBlocks::slide`]) and read [`NO_BLOCK`]: a long context holds a window's
//! worth of blocks there. Given-back blocks that were registered stay in the window pool's
//! prefix cache until evicted, so a later prompt sharing the prefix can still take it: a
//! prefix hit needs the main pool's whole chain and the window pool's blocks within the window
//! of its end (vLLM's rule for sliding-window groups).

use super::blocks::{BlockManager, PrefixStats};
use lowbit_gpu::NO_BLOCK;

/// One sequence's block tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqBlocks {
    /// In the main pool: position `p` in `main[p / block_tokens]`.
    pub main: Vec<u32>,
    /// In the window pool, as long as `main` (empty without a window pool); its given-back
    /// entries ([`NO_BLOCK`]) are always a prefix of it.
    pub window: Vec<u32>,
}

impl SeqBlocks {
    /// Blocks of the table (of each pool).
    pub fn len(&self) -> usize {
        self.main.len()
    }

    /// Whether it holds no block.
    pub fn is_empty(&self) -> bool {
        self.main.is_empty()
    }
}

/// Block copies `(from, to)` to make before the next forward, per pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockCopies {
    pub main: Vec<(u32, u32)>,
    pub window: Vec<(u32, u32)>,
}

impl BlockCopies {
    /// Whether there is nothing to copy.
    pub fn is_empty(&self) -> bool {
        self.main.is_empty() && self.window.is_empty()
    }
}

/// The head of a cached block that a prompt shares, in each pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialHit {
    pub source: u32,
    /// The window pool's copy of the same block (with a window pool).
    pub window_source: Option<u32>,
    /// Leading positions of the source that match.
    pub tokens: usize,
}

/// What a prompt found in the prefix cache ([`KvBlocks::lookup_prefix`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixHit {
    /// Whole blocks reused as they are: positions `0..blocks.len() · block_tokens`.
    pub blocks: SeqBlocks,
    /// A cached block whose first tokens continue the match, to be copied into the
    /// sequence's next block; held until [`KvBlocks::release_source`].
    pub partial: Option<PartialHit>,
}

impl PrefixHit {
    /// Positions whose keys and values the hit provides.
    pub fn positions(&self, block_tokens: usize) -> usize {
        self.blocks.len() * block_tokens + self.partial.map_or(0, |p| p.tokens)
    }
}

/// The window pool's blocks and the window they serve.
#[derive(Debug)]
struct WindowBlocks {
    blocks: BlockManager,
    /// Positions a row sees back to itself.
    window: usize,
}

/// Block ids of the main pool and, where the model has one, the window pool.
#[derive(Debug)]
pub struct KvBlocks {
    main: BlockManager,
    window: Option<WindowBlocks>,
}

impl From<BlockManager> for KvBlocks {
    fn from(main: BlockManager) -> Self {
        Self { main, window: None }
    }
}

impl KvBlocks {
    /// Tables over `main` and a window pool's `blocks` serving a window of `window`
    /// positions (of the same block size).
    pub fn with_window(main: BlockManager, blocks: BlockManager, window: usize) -> Self {
        debug_assert_eq!(main.block_tokens(), blocks.block_tokens());
        Self {
            main,
            window: Some(WindowBlocks {
                blocks,
                window: window.max(1),
            }),
        }
    }

    /// The main pool's blocks (its counts are the metrics' `kv_blocks`).
    pub fn main(&self) -> &BlockManager {
        &self.main
    }

    /// The window pool's blocks, where there is one.
    pub fn window(&self) -> Option<&BlockManager> {
        self.window.as_ref().map(|w| &w.blocks)
    }

    /// Positions per block.
    pub fn block_tokens(&self) -> usize {
        self.main.block_tokens()
    }

    /// Prefix-cache counters so far.
    pub fn stats(&self) -> PrefixStats {
        self.main.stats()
    }

    /// The first block of a table that a row at position `pos` (or later) reads in the
    /// window pool: the blocks before it can be given back.
    fn first_needed(&self, pos: usize) -> usize {
        self.window.as_ref().map_or(0, |w| {
            (pos + 1).saturating_sub(w.window) / self.main.block_tokens()
        })
    }

    /// Whether a sequence holding `held` whose next position is `next` could grow to
    /// `positions` with the blocks it holds and those available (admission).
    pub fn can_admit(&self, held: &SeqBlocks, next: usize, positions: usize) -> bool {
        let main = &self.main;
        if main.blocks_for(positions) > main.available() + held.main.len() {
            return false;
        }
        self.window.as_ref().is_none_or(|w| {
            let live = held.window.iter().filter(|&&b| b != NO_BLOCK).count();
            // (Blocks it holds before `next`'s window count as coming back: true of a
            // waiting sequence's, which nothing shares.)
            let need = w.blocks.blocks_for(positions);
            need.saturating_sub(self.first_needed(next)) <= w.blocks.available() + live
        })
    }

    /// Grows both tables to cover `positions`, all or nothing.
    pub fn grow(&mut self, t: &mut SeqBlocks, positions: usize) -> bool {
        let need_main = self.main.blocks_for(positions).saturating_sub(t.main.len());
        if need_main > self.main.available() {
            return false;
        }
        if let Some(w) = &mut self.window {
            let need = w
                .blocks
                .blocks_for(positions)
                .saturating_sub(t.window.len());
            if need > w.blocks.available() {
                return false;
            }
            let grown = w.blocks.grow(&mut t.window, positions);
            debug_assert!(grown);
        }
        self.main.grow(&mut t.main, positions)
    }

    /// [`Self::grow`] from free blocks alone, evicting no cached block (speculative drafts).
    pub fn grow_from_free(&mut self, t: &mut SeqBlocks, positions: usize) -> bool {
        let need_main = self.main.blocks_for(positions).saturating_sub(t.main.len());
        if need_main > self.main.free() {
            return false;
        }
        if let Some(w) = &mut self.window {
            if !w.blocks.grow_from_free(&mut t.window, positions) {
                return false;
            }
        }
        let grown = self.main.grow_from_free(&mut t.main, positions);
        debug_assert!(grown);
        grown
    }

    /// Drops the blocks past the first `blocks_for(positions)` of both tables.
    pub fn truncate(&mut self, t: &mut SeqBlocks, positions: usize) {
        self.main.truncate(&mut t.main, positions);
        if let Some(w) = &mut self.window {
            w.blocks.truncate(&mut t.window, positions);
        }
    }

    /// Drops one reference to every block of both tables and empties them.
    pub fn release(&mut self, t: &mut SeqBlocks) {
        self.main.release(&mut t.main);
        if let Some(w) = &mut self.window {
            w.blocks.release(&mut t.window);
        }
    }

    /// Gives back the window blocks that no row from position `next` on reads.
    pub fn slide(&mut self, t: &mut SeqBlocks, next: usize) {
        let first = self.first_needed(next).min(t.window.len());
        if let Some(w) = &mut self.window {
            // Given-back entries are always a prefix of the table: walk back from the
            // window's start to the last one (a step's work, not the context's).
            for id in t.window[..first].iter_mut().rev() {
                if *id == NO_BLOCK {
                    break;
                }
                w.blocks.release_one(std::mem::replace(id, NO_BLOCK));
            }
        }
    }

    /// Adds a reference to the first `count` blocks of both tables (a fork sharing its
    /// parent's full blocks): the shared tables.
    pub fn share(&mut self, t: &SeqBlocks, count: usize) -> SeqBlocks {
        let main = t.main[..count].to_vec();
        for &b in &main {
            self.main.share(b);
        }
        let mut window = Vec::new();
        if let Some(w) = &mut self.window {
            window = t.window[..count].to_vec();
            for &b in window.iter().filter(|&&b| b != NO_BLOCK) {
                w.blocks.share(b);
            }
        }
        SeqBlocks { main, window }
    }

    /// One block for exclusive use in each pool (a fork's copy of a partial block), or
    /// nothing when either pool has none.
    pub fn allocate(&mut self) -> Option<(u32, Option<u32>)> {
        if self.main.available() == 0
            || self
                .window
                .as_ref()
                .is_some_and(|w| w.blocks.available() == 0)
        {
            return None;
        }
        let main = self.main.allocate()?;
        let window = match &mut self.window {
            Some(w) => w.blocks.allocate(),
            None => None,
        };
        Some((main, window))
    }

    /// The longest cached prefix of `tokens` both pools can serve: the main pool's chain
    /// ([`BlockManager::lookup_prefix`]), cut where the window pool lacks a block within the
    /// window of the hit's end; a partial hit only where the window pool holds the same block.
    pub fn lookup_prefix(&mut self, tokens: &[u32]) -> PrefixHit {
        let hit = self.main.lookup_prefix(tokens);
        let bt = self.main.block_tokens();
        let first_needed = |n: usize| self.first_needed(n * bt);
        let Some(w) = &self.window else {
            return PrefixHit {
                partial: hit.partial.map(|p| PartialHit {
                    source: p.source,
                    window_source: None,
                    tokens: p.tokens,
                }),
                blocks: SeqBlocks {
                    main: hit.blocks,
                    window: Vec::new(),
                },
            };
        };
        let chain = hit.blocks.len();
        let held: Vec<Option<u32>> = w
            .blocks
            .keys(tokens, chain)
            .iter()
            .map(|k| w.blocks.registered(k))
            .collect();
        let mut n = chain;
        while n > 0 && held[first_needed(n)..n].iter().any(Option::is_none) {
            n -= 1;
        }
        let window_source = hit.partial.filter(|_| n == chain).and_then(|p| {
            let key = self.main.key_of(p.source)?;
            w.blocks.registered(key)
        });
        let start = first_needed(n);
        let (mut main, partial) = (hit.blocks, hit.partial);
        // What the window pool cannot serve goes back, uncounted.
        let mut dropped = 0;
        for id in main.drain(n..) {
            self.main.give_back(id);
            dropped += bt;
        }
        let partial = match (partial, window_source) {
            (Some(p), Some(ws)) => Some(PartialHit {
                source: p.source,
                window_source: Some(ws),
                tokens: p.tokens,
            }),
            (Some(p), None) => {
                self.main.give_back(p.source);
                dropped += p.tokens;
                None
            }
            (None, _) => None,
        };
        self.main.uncount_lookup(0, dropped);
        let mut window = vec![NO_BLOCK; start];
        window.extend(held[start..n].iter().flatten());
        // (The window pool is there: `held` came from it.)
        if let Some(w) = &mut self.window {
            let sources = partial.and_then(|p| p.window_source);
            for &id in window[start..].iter().chain(&sources) {
                w.blocks.take_ref(id);
            }
        }
        PrefixHit {
            blocks: SeqBlocks { main, window },
            partial,
        }
    }

    /// Takes back what a lookup counted whose hit was not used.
    pub fn uncount_lookup(&mut self, queried: usize, hit: usize) {
        self.main.uncount_lookup(queried, hit);
    }

    /// Drops the references a [`PartialHit`] held on its sources.
    pub fn release_source(&mut self, p: &PartialHit) {
        self.main.release_source(p.source);
        if let (Some(w), Some(ws)) = (&mut self.window, p.window_source) {
            w.blocks.release_source(ws);
        }
    }

    /// Registers the full blocks of both tables whose positions `0..computed` are written.
    pub fn register_full_blocks(&mut self, tokens: &[u32], t: &SeqBlocks, computed: usize) {
        self.main.register_full_blocks(tokens, &t.main, computed);
        if let Some(w) = &mut self.window {
            w.blocks.register_full_blocks(tokens, &t.window, computed);
        }
    }

    /// Whether every block of both pools is back with no reference left.
    pub fn all_released(&self) -> bool {
        self.main.all_released() && self.window().is_none_or(BlockManager::all_released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slid_blocks_are_cached_and_a_hit_needs_those_within_its_window() {
        // Blocks of four positions, a window of six.
        let pool = || BlockManager::new(16, 4, true);
        let mut k = KvBlocks::with_window(pool(), pool(), 6);
        let tokens: Vec<u32> = (0..21).collect();
        let mut t = SeqBlocks::default();
        assert!(k.grow(&mut t, 21));
        assert_eq!((t.main.len(), t.window.len()), (6, 6));
        let window_ids = t.window.clone();
        k.register_full_blocks(&tokens, &t, 21);
        // A row at position 21 sees 16..=21: blocks 0..4 go back, cached (registered).
        k.slide(&mut t, 21);
        assert_eq!(t.window[..4], [NO_BLOCK; 4]);
        let window = |k: &KvBlocks| k.window().map(|w| (w.in_use(), w.cached()));
        assert_eq!(window(&k), Some((2, 4)));
        assert_eq!(k.main().in_use(), 6);

        // The same 21 tokens and more: the main chain's five blocks; a row at 20 sees
        // 15..=20, blocks 3 and 4 of the window pool (3 cached, 4 in use).
        let mut longer = tokens.clone();
        longer.extend([99, 98]);
        let mut hit = k.lookup_prefix(&longer);
        assert_eq!(hit.blocks.main, t.main[..5]);
        assert_eq!(hit.blocks.window[..3], [NO_BLOCK; 3]);
        assert_eq!(hit.blocks.window[3..], window_ids[3..5]);
        assert_eq!(hit.partial, None);
        assert_eq!(k.stats().hit_tokens, 20);
        k.release(&mut hit.blocks);
        k.release(&mut t);
        assert!(k.all_released());
        assert_eq!(window(&k), Some((0, 5)));

        // Evict the window pool's four oldest cached blocks (0..=3): no cut of the chain
        // has its window's blocks any more, so nothing is hit (and nothing counted), though
        // the main pool still holds the whole chain.
        let mut other = SeqBlocks::default();
        let free = 16 - 5;
        assert!(k.grow(&mut other, 4 * (free + 4)));
        assert_eq!(window(&k), Some((15, 1)));
        k.release(&mut other);
        let hit = k.lookup_prefix(&longer);
        assert_eq!(hit, PrefixHit::default());
        assert_eq!(k.stats().hit_tokens, 20);
        assert!(k.all_released());
    }

    #[test]
    fn a_hit_cut_short_leaves_the_main_pools_eviction_order_alone() {
        // Main: 4 blocks of 4; window pool: 2 blocks; window 4.
        let mut k = KvBlocks::with_window(
            BlockManager::new(4, 4, true),
            BlockManager::new(2, 4, true),
            4,
        );
        let (a, b): (Vec<u32>, Vec<u32>) = ((0..5).collect(), (50..55).collect());
        let a_first = {
            let mut t = SeqBlocks::default();
            assert!(k.grow(&mut t, 5));
            k.register_full_blocks(&a, &t, 5);
            let first = t.main[0];
            k.release(&mut t);
            first
        };
        // B's blocks take A's window blocks (evicted): A's chain is cached in the main pool
        // only, released before B's.
        let mut t = SeqBlocks::default();
        assert!(k.grow(&mut t, 5));
        k.register_full_blocks(&b, &t, 5);
        k.release(&mut t);
        // A again: its main block hits, the window pool cannot serve it, the hit is cut to
        // nothing, and A's block stays the oldest cached one.
        assert_eq!(k.lookup_prefix(&a), PrefixHit::default());
        // Two free main blocks, then the oldest cached: A's, not B's.
        let taken: Vec<u32> = (0..3).filter_map(|_| k.main.allocate()).collect();
        assert!(taken.contains(&a_first), "{taken:?}");
        let mut hit = k.lookup_prefix(&b);
        assert_eq!(hit.blocks.main.len(), 1, "B's block was evicted before A's");
        k.release(&mut hit.blocks);
        for id in taken {
            k.main.release_one(id);
        }
        assert!(k.all_released());
    }

    #[test]
    fn growth_is_all_or_nothing_across_the_pools() {
        let mut k = KvBlocks::with_window(
            BlockManager::new(8, 4, true),
            BlockManager::new(2, 4, true),
            4,
        );
        let mut t = SeqBlocks::default();
        // Three blocks: the main pool has them, the window pool two.
        assert!(!k.can_admit(&t, 0, 12));
        assert!(!k.grow(&mut t, 12));
        assert!(t.is_empty() && k.all_released());
        assert!(k.grow(&mut t, 8));
        // At position 8 a row sees 5..=8: block 0 goes back, and a third block fits.
        assert!(k.can_admit(&t, 8, 12));
        k.slide(&mut t, 8);
        assert!(k.grow(&mut t, 12));
        assert_eq!(t.window[0], NO_BLOCK);
        assert!(!k.grow_from_free(&mut t, 16), "the window pool is full");
        assert_eq!(t.len(), 3);
        k.truncate(&mut t, 5);
        assert_eq!((t.main.len(), t.window.len()), (2, 2));
        k.release(&mut t);
        assert!(k.all_released());
    }
}
