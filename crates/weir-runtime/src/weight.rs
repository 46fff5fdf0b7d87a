//! The weight every item reports: the unit in which channel budgets are counted.

use bytes::{Bytes, BytesMut};

/// How many bytes an item holds: the unit in which channel budgets are counted.
pub trait Weighted {
    fn weight(&self) -> usize;
}

impl Weighted for Bytes {
    fn weight(&self) -> usize {
        self.len()
    }
}

impl Weighted for BytesMut {
    fn weight(&self) -> usize {
        self.len()
    }
}

impl Weighted for Vec<u8> {
    fn weight(&self) -> usize {
        self.len()
    }
}

impl Weighted for String {
    fn weight(&self) -> usize {
        self.len()
    }
}
