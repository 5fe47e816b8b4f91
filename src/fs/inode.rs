//! FUSE node ids and the cipherdir paths they stand for.
//!
//! Names are plaintext in this format, so a node is just its path relative to
//! the cipherdir. A rename moves every path below it; the kernel's lookup
//! counts decide when a node can be forgotten. A file with hard links is one
//! node with several paths (its backing inode finds it), so every name shows
//! the same inode number and shares the kernel's cached state.

use std::collections::HashMap;

pub const ROOT: u64 = 1;

struct Node {
    path: String,
    /// Its other names, for a file with hard links.
    aliases: Vec<String>,
    /// The backing inode (device, number) of a file with hard links.
    backing: Option<(u64, u64)>,
    nlookup: u64,
}

pub struct Inodes {
    nodes: HashMap<u64, Node>,
    by_path: HashMap<String, u64>,
    by_backing: HashMap<(u64, u64), u64>,
    next: u64,
}

impl Default for Inodes {
    fn default() -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                path: String::new(),
                aliases: vec![],
                backing: None,
                nlookup: 1,
            },
        );
        let mut by_path = HashMap::new();
        by_path.insert(String::new(), ROOT);
        Inodes {
            nodes,
            by_path,
            by_backing: HashMap::new(),
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
                aliases: vec![],
                backing: None,
                nlookup: 1,
            },
        );
        self.by_path.insert(path.to_string(), ino);
        ino
    }

    /// `lookup` of a file with more than one name (st_nlink > 1): the node
    /// of its backing inode `backing` if another name already has one, with
    /// `path` added to its names.
    pub fn lookup_linked(&mut self, path: &str, backing: (u64, u64)) -> u64 {
        if self.by_path.contains_key(path) {
            return self.lookup(path);
        }
        if let Some(&ino) = self.by_backing.get(&backing)
            && let Some(n) = self.nodes.get_mut(&ino)
        {
            n.nlookup += 1;
            n.aliases.push(path.to_string());
            self.by_path.insert(path.to_string(), ino);
            return ino;
        }
        let ino = self.lookup(path);
        self.by_backing.insert(backing, ino);
        self.nodes.get_mut(&ino).expect("just made").backing = Some(backing);
        ino
    }

    /// A new name for node `ino` (link(2)), which counts a lookup.
    pub fn add_link(&mut self, ino: u64, path: &str, backing: (u64, u64)) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.nlookup += 1;
            if n.path.starts_with('\0') {
                n.path = path.to_string();
            } else {
                n.aliases.push(path.to_string());
            }
            if n.backing.is_none() {
                n.backing = Some(backing);
                self.by_backing.insert(backing, ino);
            }
            self.by_path.insert(path.to_string(), ino);
        }
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
            for p in std::iter::once(&node.path).chain(&node.aliases) {
                if self.by_path.get(p) == Some(&ino) {
                    self.by_path.remove(p);
                }
            }
            if let Some(b) = node.backing
                && self.by_backing.get(&b) == Some(&ino)
            {
                self.by_backing.remove(&b);
            }
        }
        gone
    }

    /// Detaches `path` (unlinked or replaced): its node stays valid for open
    /// handles but no longer answers to the name; a file with other names
    /// goes on under one of them.
    pub fn unlink(&mut self, path: &str) {
        if let Some(ino) = self.by_path.remove(path)
            && let Some(n) = self.nodes.get_mut(&ino)
        {
            if let Some(i) = n.aliases.iter().position(|a| a == path) {
                n.aliases.remove(i);
            } else if !n.aliases.is_empty() {
                n.path = n.aliases.remove(0);
            } else {
                n.path = format!("\0unlinked/{ino}");
            }
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
            let n = self.nodes.get_mut(&ino).expect("indexed");
            if n.path == old {
                n.path = new;
            } else if let Some(a) = n.aliases.iter_mut().find(|a| **a == old) {
                *a = new;
            }
        }
    }

    /// Swaps `a` and `b` and everything below them (RENAME_EXCHANGE).
    pub fn exchange(&mut self, a: &str, b: &str) {
        const AWAY: &str = "\0exchanging";
        self.rename(a, AWAY);
        self.rename(b, a);
        self.rename(AWAY, b);
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

    #[test]
    fn hard_links_share_a_node() {
        let mut t = Inodes::default();
        let b = (1, 77);
        let a = t.lookup_linked("d/a", b);
        assert_eq!(t.lookup_linked("e/b", b), a);
        t.add_link(a, "c", b);
        assert_eq!(t.peek("c"), Some(a));
        // Renaming the directory above one name moves that name only.
        t.rename("e", "f");
        assert_eq!(t.peek("f/b"), Some(a));
        assert_eq!(t.path(a).unwrap(), "d/a");
        // Unlinking the first name leaves the node under another.
        t.unlink("d/a");
        assert_eq!(t.peek("d/a"), None);
        let p = t.path(a).unwrap();
        assert!(p == "f/b" || p == "c", "{p}");
        t.unlink("f/b");
        t.unlink("c");
        assert!(t.path(a).unwrap().starts_with('\0'));
        // Forgetting it forgets every name and the backing inode.
        t.forget(a, 3);
        assert_ne!(t.lookup_linked("g", b), a);
    }

    #[test]
    fn exchange_swaps_both_subtrees() {
        let mut t = Inodes::default();
        let (x, xs, y) = (t.lookup("x"), t.lookup("x/s"), t.lookup("y"));
        t.exchange("x", "y");
        assert_eq!(t.path(x).unwrap(), "y");
        assert_eq!(t.path(xs).unwrap(), "y/s");
        assert_eq!(t.path(y).unwrap(), "x");
        assert_eq!(t.peek("x/s"), None);
    }
}
