//! Maps and sets keyed by quinn-proto's [`ConnectionHandle`], stored densely by index.
//!
//! quinn-proto hands out connection handles from a slab: small integers, reused after a
//! connection is drained. The I/O loop looks connections up several times per datagram and per
//! drive, so a vector indexed by the handle replaces hashing (SipHash showed up at about 2–3% of
//! the I/O thread's samples in the request/response profile). Hand-written because the lookup
//! is by quinn-proto's own index, which slab crates do not let us choose.

use quinn_proto::ConnectionHandle;

/// `ConnectionHandle → T`, a vector of slots.
#[derive(Debug)]
pub(crate) struct HandleMap<T> {
    slots: Vec<Option<T>>,
    len: usize,
}

impl<T> Default for HandleMap<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            len: 0,
        }
    }
}

impl<T> HandleMap<T> {
    pub(crate) fn get(&self, ch: &ConnectionHandle) -> Option<&T> {
        self.slots.get(ch.0)?.as_ref()
    }

    /// Insert, returning the previous value.
    pub(crate) fn insert(&mut self, ch: ConnectionHandle, value: T) -> Option<T> {
        if ch.0 >= self.slots.len() {
            self.slots.resize_with(ch.0 + 1, || None);
        }
        let old = self.slots[ch.0].replace(value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub(crate) fn remove(&mut self, ch: &ConnectionHandle) -> Option<T> {
        let old = self.slots.get_mut(ch.0)?.take();
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn clear(&mut self) {
        self.slots.clear();
        self.len = 0;
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (ConnectionHandle, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some((ConnectionHandle(i), v.as_ref()?)))
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = ConnectionHandle> + '_ {
        self.iter().map(|(ch, _)| ch)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().filter_map(Option::as_ref)
    }
}

/// A set of connection handles.
#[derive(Debug, Default)]
pub(crate) struct HandleSet(HandleMap<()>);

impl HandleSet {
    /// Add `ch`; true if it was not there.
    pub(crate) fn insert(&mut self, ch: ConnectionHandle) -> bool {
        self.0.insert(ch, ()).is_none()
    }

    /// Remove `ch`; true if it was there.
    pub(crate) fn remove(&mut self, ch: &ConnectionHandle) -> bool {
        self.0.remove(ch).is_some()
    }

    pub(crate) fn contains(&self, ch: &ConnectionHandle) -> bool {
        self.0.get(ch).is_some()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_and_set_behave_like_the_std_ones() {
        let mut m = HandleMap::default();
        assert_eq!(m.len(), 0);
        assert_eq!(m.insert(ConnectionHandle(5), "a"), None);
        assert_eq!(m.insert(ConnectionHandle(1), "b"), None);
        assert_eq!(m.insert(ConnectionHandle(5), "c"), Some("a"));
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(&ConnectionHandle(5)), Some(&"c"));
        assert_eq!(m.get(&ConnectionHandle(4)), None);
        assert_eq!(m.get(&ConnectionHandle(99)), None);
        assert_eq!(
            m.keys().collect::<Vec<_>>(),
            [ConnectionHandle(1), ConnectionHandle(5)]
        );
        assert_eq!(m.values().copied().collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(m.remove(&ConnectionHandle(1)), Some("b"));
        assert_eq!(m.remove(&ConnectionHandle(1)), None);
        assert_eq!(m.remove(&ConnectionHandle(77)), None);
        assert_eq!(m.len(), 1);
        m.clear();
        assert!(m.len() == 0 && m.iter().next().is_none());

        let mut s = HandleSet::default();
        assert!(s.insert(ConnectionHandle(3)));
        assert!(!s.insert(ConnectionHandle(3)));
        assert!(s.contains(&ConnectionHandle(3)) && !s.contains(&ConnectionHandle(4)));
        assert_eq!(s.len(), 1);
        assert!(s.remove(&ConnectionHandle(3)));
        assert!(!s.remove(&ConnectionHandle(3)));
        assert_eq!(s.len(), 0);
    }
}
