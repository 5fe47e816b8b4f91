//! FUSE node ids and the cipherdir paths they stand for.
//!
//! Names are plaintext in this format, so a node is just its path relative to
//! the cipherdir. A rename moves every path below it; the kernel's lookup
//! counts decide when a node can be forgotten.

use std::collections::HashMap;

pub const ROOT: u64 = 1;

struct Node {
    path: String,
    nlookup: u64,
}

pub struct Inodes {
    nodes: HashMap<u64, Node>,
    by_path: HashMap<String, u64>,
    next: u64,
}

impl Default for Inodes {
    fn default() -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                path: String::new(),
                nlookup: 1,
            },
        );
        let mut by_path = HashMap::new();
        by_path.insert(String::new(), ROOT);
        Inodes {
            nodes,
            by_path,
            next: ROOT + 1,
        }
    }
}

/// `parent/name`, with the root as "".
pub fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

/// The parent of a path, with the root as "" (and the root its own parent).
pub fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

impl Inodes {
    pub fn path(&self, ino: u64) -> Option<String> {
        self.nodes.get(&ino).map(|n| n.path.clone())
    }

    /// The node for `path`, created if new; counts one kernel lookup.
    pub fn lookup(&mut self, path: &str) -> u64 {
        if let Some(&ino) = self.by_path.get(path) {
            self.nodes.get_mut(&ino).expect("indexed").nlookup += 1;
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(
            ino,
            Node {
                path: path.to_string(),
                nlookup: 1,
            },
        );
        self.by_path.insert(path.to_string(), ino);
        ino
    }

    /// The node id a path already has, without counting a lookup.
    pub fn peek(&self, path: &str) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    /// Drops `n` kernel references; true when the node is gone.
    pub fn forget(&mut self, ino: u64, n: u64) -> bool {
        if ino == ROOT {
            return false;
        }
        let gone = match self.nodes.get_mut(&ino) {
            Some(node) => {
                node.nlookup = node.nlookup.saturating_sub(n);
                node.nlookup == 0
            }
            None => false,
        };
        if gone {
            let node = self.nodes.remove(&ino).expect("present");
            if self.by_path.get(&node.path) == Some(&ino) {
                self.by_path.remove(&node.path);
            }
        }
        gone
    }

    /// Detaches `path` (unlinked or replaced): its node stays valid for open
    /// handles but no longer answers to the name.
    pub fn unlink(&mut self, path: &str) {
        if let Some(ino) = self.by_path.remove(path)
            && let Some(n) = self.nodes.get_mut(&ino)
        {
            n.path = format!("\0unlinked/{ino}");
        }
    }

    /// Moves `from` and everything below it to `to`.
    pub fn rename(&mut self, from: &str, to: &str) {
        self.unlink(to);
        let prefix = format!("{from}/");
        let moved: Vec<(String, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.as_str() == from || p.starts_with(&prefix))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        for (old, ino) in moved {
            let new = format!("{to}{}", &old[from.len()..]);
            self.by_path.remove(&old);
            self.by_path.insert(new.clone(), ino);
            self.nodes.get_mut(&ino).expect("indexed").path = new;
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_forget_rename() {
        let mut t = Inodes::default();
        let a = t.lookup("a");
        let ab = t.lookup("a/b");
        assert_eq!(t.lookup("a"), a);
        t.rename("a", "c");
        assert_eq!(t.path(ab).unwrap(), "c/b");
        assert_eq!(t.peek("a/b"), None);
        assert_eq!(t.peek("c"), Some(a));
        t.forget(a, 1);
        assert!(t.path(a).is_some());
        t.forget(a, 1);
        assert!(t.path(a).is_none());
        t.unlink("c/b");
        assert_eq!(t.peek("c/b"), None);
        assert!(t.path(ab).unwrap().starts_with('\0'));
        assert_eq!(join("", "x"), "x");
        assert_eq!(join("a", "x"), "a/x");
        // "ab" is not below "a".
        let x = t.lookup("ab");
        t.rename("a", "z");
        assert_eq!(t.path(x).unwrap(), "ab");
    }
}
