//! The SIMULATED engine's prompt cache: a fixed number of slots, each holding the text of its
//! last request (the prompt and the answer generated for it), reused the way llama-server reuses
//! its slots' KV cache. It decides how many of a request's prompt tokens are cached (their
//! prefill is skipped) and what each slot holds afterwards. A token is four characters.

use std::sync::{Mutex, PoisonError};

/// Characters per simulated token.
const CHARS_PER_TOKEN: usize = 4;

/// The simulated token count of `text`: a token per four characters, at least one.
pub fn tokens(text: &str) -> u64 {
    u64::try_from(text.chars().count().div_ceil(CHARS_PER_TOKEN)).unwrap_or(u64::MAX).max(1)
}

/// One engine's slots. Requests may run at once: the cache only decides reuse, never waits.
pub struct PromptCache {
    inner: Mutex<Slots>,
}

struct Slots {
    slots: Vec<Slot>,
    /// Advances on every request; a slot's `used` is the tick of its last request.
    tick: u64,
}

#[derive(Default)]
struct Slot {
    text: String,
    used: u64,
}

/// What one request found in the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reuse {
    /// The slot it took.
    pub slot: usize,
    /// Prompt tokens found cached (never the whole prompt: the engine evaluates at least its
    /// last token, as llama-server does).
    pub cached_tokens: u64,
    pub prompt_tokens: u64,
}

impl PromptCache {
    /// A cache of `slots` empty slots (at least one).
    pub fn new(slots: usize) -> PromptCache {
        let slots = (0..slots.max(1)).map(|_| Slot::default()).collect();
        PromptCache { inner: Mutex::new(Slots { slots, tick: 0 }) }
    }

    /// Serve `prompt` (the request's rendered text): take a slot, count the prompt's cached
    /// tokens, then leave `prompt` followed by `answer` in the slot. The slot taken is the one
    /// holding the longest earlier turn of this prompt (its text a prefix of the prompt) or the
    /// longest text the prompt is a prefix of (a retry); failing both, the least recently used
    /// one, an empty one first. Another conversation's slot is never taken for a prefix they
    /// merely share (a system prompt): that would evict it while older slots wait. The cached
    /// tokens are the longest prefix of the prompt any slot holds: the engine copies it into the
    /// slot taken, as llama-server restores a prompt from its prompt cache (`--cache-ram`) and
    /// vLLM shares prefix blocks between requests.
    pub fn serve(&self, prompt: &str, answer: &str) -> Reuse {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.tick += 1;
        let tick = inner.tick;
        let slot = reusable(&inner.slots, prompt).unwrap_or_else(|| least_recent(&inner.slots));
        let common = inner.slots.iter().map(|s| common_prefix(&s.text, prompt)).max().unwrap_or(0);
        let taken = &mut inner.slots[slot];
        let prompt_tokens = tokens(prompt);
        let cached = u64::try_from(prompt[..common].chars().count() / CHARS_PER_TOKEN).unwrap_or(u64::MAX);
        taken.text.clear();
        taken.text.push_str(prompt);
        taken.text.push_str(answer);
        taken.used = tick;
        Reuse { slot, cached_tokens: cached.min(prompt_tokens - 1), prompt_tokens }
    }
}

/// The slot holding the longest earlier turn of `prompt`, or the longest text `prompt` begins.
fn reusable(slots: &[Slot], prompt: &str) -> Option<usize> {
    let mut best: Option<(usize, usize)> = None;
    for (index, slot) in slots.iter().enumerate() {
        let common = common_prefix(&slot.text, prompt);
        let continues = common == slot.text.len() || common == prompt.len();
        if common > 0 && continues && best.is_none_or(|(_, longest)| common > longest) {
            best = Some((index, common));
        }
    }
    best.map(|(index, _)| index)
}

/// The least recently used slot (empty slots have never been used); the lowest index on a tie.
fn least_recent(slots: &[Slot]) -> usize {
    slots.iter().enumerate().min_by_key(|(index, slot)| (slot.used, *index)).map_or(0, |(index, _)| index)
}

/// The length in bytes of the longest common prefix of `a` and `b`, on a character boundary.
fn common_prefix(a: &str, b: &str) -> usize {
    let mut n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    while !b.is_char_boundary(n) {
        n -= 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` characters of a conversation's text, distinct per `tag`.
    fn text(tag: char, n: usize) -> String {
        std::iter::repeat_n(tag, n).collect()
    }

    #[test]
    fn a_token_is_four_characters_and_there_is_at_least_one() {
        assert_eq!(tokens(""), 1);
        assert_eq!(tokens("abcd"), 1);
        assert_eq!(tokens("abcde"), 2);
        assert_eq!(tokens("ééééé"), 2, "characters, not bytes");
    }

    #[test]
    fn the_next_turn_of_a_conversation_hits_its_slot() {
        let cache = PromptCache::new(2);
        let first = format!("{}{}", text('s', 400), text('a', 40));
        let miss = cache.serve(&first, "ANSWER");
        assert_eq!(miss, Reuse { slot: 0, cached_tokens: 0, prompt_tokens: 110 });
        // The next turn resends the prompt and the answer, then adds its own text.
        let second = format!("{first}ANSWER{}", text('b', 100));
        let hit = cache.serve(&second, "ANSWER");
        assert_eq!(hit.slot, 0);
        assert_eq!(hit.cached_tokens, (440 + 6) / 4, "the prompt and the answer are cached");
        assert_eq!(hit.prompt_tokens, 137);
    }

    #[test]
    fn the_same_prompt_again_keeps_its_last_token_uncached() {
        let cache = PromptCache::new(1);
        let prompt = text('p', 400);
        cache.serve(&prompt, "x");
        let again = cache.serve(&prompt, "x");
        assert_eq!((again.slot, again.cached_tokens, again.prompt_tokens), (0, 99, 100));
    }

    #[test]
    fn a_shared_prefix_is_a_partial_hit_in_the_slot_taken() {
        let cache = PromptCache::new(1);
        let system = text('s', 400);
        cache.serve(&format!("{system}{}", text('a', 200)), "A");
        // Another conversation with the same system prompt: the only slot is taken, and what the
        // two share (the system prompt) is reused.
        let other = cache.serve(&format!("{system}{}", text('b', 200)), "B");
        assert_eq!((other.slot, other.cached_tokens, other.prompt_tokens), (0, 100, 150));
        // The first conversation's next turn finds its slot overwritten: the shared part only.
        let back = cache.serve(&format!("{system}{}A{}", text('a', 200), text('c', 40)), "A");
        assert_eq!(back.cached_tokens, 100);
    }

    #[test]
    fn a_new_conversation_takes_an_empty_slot_then_the_least_recently_used() {
        let cache = PromptCache::new(3);
        let system = text('s', 400);
        let conversation = |tag: char| format!("{system}{}", text(tag, 100));
        let slots: Vec<usize> = ['a', 'b', 'c'].map(|t| cache.serve(&conversation(t), "").slot).to_vec();
        assert_eq!(slots, [0, 1, 2], "a shared system prompt does not evict a conversation");
        // `a` comes back (its slot becomes the most recent); `d` evicts `b`, the least recent.
        assert_eq!(cache.serve(&format!("{}more", conversation('a')), "").slot, 0);
        let d = cache.serve(&conversation('d'), "");
        assert_eq!((d.slot, d.cached_tokens), (1, 100), "b's slot, with the system prompt in it");
        // `b`'s next turn is a miss beyond the system prompt; `c`'s is still a full hit.
        let b = cache.serve(&format!("{}more", conversation('b')), "");
        assert_eq!((b.slot, b.cached_tokens), (2, 100), "c's slot, now the least recent");
        let c = cache.serve(&format!("{}more", conversation('c')), "");
        assert_eq!(c.cached_tokens, 100, "c was evicted by b");
    }

    #[test]
    fn a_new_conversation_in_an_empty_slot_reuses_a_prefix_another_slot_holds() {
        let cache = PromptCache::new(4);
        let system = text('s', 400);
        cache.serve(&format!("{system}{}", text('a', 100)), "");
        let b = cache.serve(&format!("{system}{}", text('b', 100)), "");
        assert_eq!((b.slot, b.cached_tokens), (1, 100), "its own slot, the system prompt copied");
        let a = cache.serve(&format!("{system}{}more", text('a', 100)), "");
        assert_eq!((a.slot, a.cached_tokens), (0, 125), "a's own slot is still there");
    }

    #[test]
    fn the_slot_count_bounds_what_is_kept() {
        for slots in [1, 4, 16] {
            let cache = PromptCache::new(slots);
            let conversations: Vec<String> =
                (0..slots + 1).map(|i| format!("{i:04}{}", text('x', 396))).collect();
            for c in &conversations {
                assert_eq!(cache.serve(c, "").cached_tokens, 0);
            }
            // Round-robin over one conversation more than there are slots: LRU keeps none.
            let hits = conversations.iter().filter(|c| cache.serve(c, "").cached_tokens > 0).count();
            assert_eq!(hits, 0, "{slots} slots");
            // As many conversations as slots: every one stays.
            let cache = PromptCache::new(slots);
            for c in &conversations[..slots] {
                cache.serve(c, "");
            }
            let hits =
                conversations[..slots].iter().filter(|c| cache.serve(c, "").cached_tokens == 99).count();
            assert_eq!(hits, slots, "{slots} slots");
        }
        assert_eq!(PromptCache::new(0).serve("abcd", "").slot, 0, "at least one slot");
    }

    #[test]
    fn a_retry_reuses_the_slot_it_is_a_prefix_of() {
        let cache = PromptCache::new(2);
        let prompt = text('r', 400);
        cache.serve(&prompt, "a long answer the client never saw");
        cache.serve(&text('z', 40), "");
        let retry = cache.serve(&prompt, "a long answer the client never saw");
        assert_eq!((retry.slot, retry.cached_tokens), (0, 99));
    }

    #[test]
    fn multibyte_text_splits_on_character_boundaries() {
        assert_eq!(common_prefix("aé", "aè"), 1);
        assert_eq!(common_prefix("", "abc"), 0);
        let cache = PromptCache::new(1);
        cache.serve("ééééé", "");
        assert_eq!(cache.serve("éééééè", "").cached_tokens, 1);
    }
}
