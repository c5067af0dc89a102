//! A bounded byte queue: what a PS/2 device has produced and the controller has not yet
//! moved into its output buffer.

use std::collections::VecDeque;

/// A FIFO of bytes that never holds more than its capacity.
#[derive(Debug)]
pub struct ByteQueue {
    bytes: VecDeque<u8>,
    capacity: usize,
}

impl ByteQueue {
    /// An empty queue holding at most `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        ByteQueue {
            bytes: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Appends all of `bytes`, or none of them when they do not fit; says which.
    pub fn push_all(&mut self, bytes: &[u8]) -> bool {
        if self.room() < bytes.len() {
            return false;
        }
        self.bytes.extend(bytes);
        true
    }

    /// Appends `bytes` if they fit while leaving one byte free besides the last `keep`
    /// bytes of room, which are spoken for, and `also_keep` more; otherwise appends
    /// `overrun` (once: not after another `overrun`) if a byte besides the kept room is
    /// free. Returns whether `bytes` were queued. This is how a PS/2 keyboard reports a
    /// full buffer.
    pub fn push_or_overrun(
        &mut self,
        bytes: &[u8],
        overrun: u8,
        keep: usize,
        also_keep: usize,
    ) -> bool {
        let room = self.room().saturating_sub(keep);
        if room > bytes.len() + also_keep {
            self.bytes.extend(bytes);
            return true;
        }
        if room > 0 && self.bytes.back() != Some(&overrun) {
            self.bytes.push_back(overrun);
        }
        false
    }

    /// Takes the oldest byte.
    pub fn pop(&mut self) -> Option<u8> {
        self.bytes.pop_front()
    }

    /// Drops everything queued.
    pub fn clear(&mut self) {
        self.bytes.clear();
    }

    /// How many bytes are queued.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// How many more bytes fit.
    pub fn room(&self) -> usize {
        self.capacity - self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_with_one_overrun_marker() {
        let mut q = ByteQueue::new(4);
        assert!(q.push_or_overrun(&[1, 2], 0, 0, 0));
        assert!(!q.push_or_overrun(&[3, 4], 0, 0, 0), "would leave no room");
        assert!(!q.push_or_overrun(&[5], 0, 0, 0));
        assert_eq!(q.len(), 3);
        assert!(q.push_all(&[9]));
        assert!(!q.push_all(&[9]));
        let drained: Vec<u8> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(drained, [1, 2, 0, 9]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn kept_room_is_left_alone() {
        let mut q = ByteQueue::new(6);
        assert!(q.push_or_overrun(&[1, 2], 0, 2, 0));
        assert!(
            !q.push_or_overrun(&[3], 0, 2, 1),
            "3 and one more byte do not fit beside the kept room: the overrun does"
        );
        assert!(!q.push_or_overrun(&[4], 0, 2, 0), "one overrun only");
        assert!(!q.push_or_overrun(&[5], 0, 3, 0), "nothing takes kept room");
        assert_eq!(q.room(), 3);
        assert!(q.push_all(&[7, 8]), "the kept room is there");
        let drained: Vec<u8> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(drained, [1, 2, 0, 7, 8]);
    }
}
