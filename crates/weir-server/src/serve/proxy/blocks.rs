//! State kept per text block of a response (a choice, a content block): a response has one
//! or a few, so a vector searched in order is smaller than a hash map, and as fast.

pub struct Blocks<T> {
    entries: Vec<(u64, T)>,
}

impl<T> Default for Blocks<T> {
    fn default() -> Self {
        Blocks {
            entries: Vec::new(),
        }
    }
}

impl<T> Blocks<T> {
    pub fn get(&self, block: u64) -> Option<&T> {
        self.entries
            .iter()
            .find(|(b, _)| *b == block)
            .map(|(_, t)| t)
    }

    pub fn get_mut(&mut self, block: u64) -> Option<&mut T> {
        self.entries
            .iter_mut()
            .find(|(b, _)| *b == block)
            .map(|(_, t)| t)
    }

    pub fn get_or_insert_with(&mut self, block: u64, make: impl FnOnce() -> T) -> &mut T {
        let at = match self.entries.iter().position(|(b, _)| *b == block) {
            Some(at) => at,
            None => {
                self.push(block, make());
                self.entries.len() - 1
            }
        };
        &mut self.entries[at].1
    }

    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.iter().map(|(b, _)| *b)
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|(_, t)| t)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.entries.iter_mut().map(|(_, t)| t)
    }

    /// One more entry, room for it alone: most responses have one block, and a vector's
    /// first growth would make room for four.
    fn push(&mut self, block: u64, value: T) {
        self.entries.reserve_exact(1);
        self.entries.push((block, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_block_has_its_own_value() {
        let mut blocks = Blocks::default();
        blocks.get_or_insert_with(3, || "a".to_string());
        blocks.get_or_insert_with(0, || "b".to_string()).push('!');
        *blocks.get_mut(3).expect("block 3") = "c".to_string();
        blocks.get_or_insert_with(3, || unreachable!()).push('?');
        assert_eq!(blocks.get(3).map(String::as_str), Some("c?"));
        assert_eq!(blocks.get(0).map(String::as_str), Some("b!"));
        assert!(blocks.get(1).is_none());
        assert_eq!(blocks.values().count(), 2);
    }
}
