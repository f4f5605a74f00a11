/// The interval index of an address space (the kernel's augmented rbtree `interval_tree`): a
/// treap of subscriptions ordered by (start, identity), where each node also keeps the largest
/// `last` of its subtree, so an overlap query visits O(log n + k) nodes.
///
/// Intrusive: the links live in the subscriptions themselves (`IntervalSubscription.left` ...),
/// so inserting or removing allocates and frees nothing. That is what lets the space's interval
/// lock be taken by a monitor's reader between waking up and `read()`: no holder of that lock
/// ever waits for `malloc`'s arena lock, whose holder may be trimming watched heap pages and so
/// waiting for that very `read()` (DESIGN.md, deadlocks to design out).
///
/// Links are `Unmanaged` and nodes are reached with `_withUnsafeGuaranteedRef`, so walking the
/// tree does no reference counting (retains and releases on every node visited made a cache
/// miss with 2 * 10^5 regions a third slower). The tree itself holds one retain per node (taken
/// by `AddressSpace` at insert, dropped after the removal, outside the lock). Mutated only under
/// the space's interval lock; walked without it only while the space's sequence is odd, when
/// every change is deferred.
struct IntervalTree {
    typealias Node = IntervalSubscription
    typealias Link = Unmanaged<IntervalSubscription>

    private(set) var root: Link? = nil
    private(set) var count = 0
    private var rng: UInt64 = 0x9E37_79B9_7F4A_7C15


    /// Inserts `node` (not in any tree).
    mutating func insert(_ node: Node) {
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17
        node.priority = UInt32(truncatingIfNeeded: rng >> 32)
        node.left = nil
        node.right = nil
        node.maxLast = node.range.last
        root = Self.insert(Link.passUnretained(node), into: root)
        count += 1
    }

    /// Removes `node`, which must be in this tree.
    mutating func remove(_ node: Node) {
        root = Self.remove(Link.passUnretained(node), from: root)
        node.left = nil
        node.right = nil
        count -= 1
    }

    /// Whether a node overlaps `start...last`.
    func hasOverlap(start: UInt, last: UInt) -> Bool {
        !Self.forEachOverlap(root, start: start, last: last) { _ in false }
    }

    /// Calls `body` for each node of the tree rooted at `root` overlapping `start...last`, in key
    /// order, until it returns false; returns false when stopped. Reads links only: safe without
    /// the lock while the tree is frozen (see the type's comment).
    @discardableResult
    static func forEachOverlap(_ root: Link?, start: UInt, last: UInt, _ body: (Node) -> Bool) -> Bool {
        var t = root
        while let link = t {
            let (goOn, next) = link._withUnsafeGuaranteedRef { n -> (Bool?, Link?) in
                if n.maxLast < start { return (true, nil) }  // nothing below reaches the query
                if !forEachOverlap(n.left, start: start, last: last, body) { return (false, nil) }
                if n.range.start > last { return (true, nil) }  // this node and everything right start after it
                if n.range.last >= start, !body(n) { return (false, nil) }
                return (nil, n.right)
            }
            if let goOn { return goOn }
            t = next
        }
        return true
    }

    /// Key order: start, then identity (two subscriptions may share a start).
    @inline(__always)
    private static func less(_ a: Link, _ b: Link) -> Bool {
        let aStart = a._withUnsafeGuaranteedRef { $0.range.start }
        let bStart = b._withUnsafeGuaranteedRef { $0.range.start }
        return aStart < bStart || (aStart == bStart && a.toOpaque() < b.toOpaque())
    }

    @inline(__always)
    private static func update(_ t: Link) {
        t._withUnsafeGuaranteedRef { node in
            var m = node.range.last
            if let l = node.left { m = max(m, l._withUnsafeGuaranteedRef { $0.maxLast }) }
            if let r = node.right { m = max(m, r._withUnsafeGuaranteedRef { $0.maxLast }) }
            node.maxLast = m
        }
    }

    /// `t` with `node` inserted: down the search path while the nodes there come first by
    /// priority, then `node` takes the place it reached, the subtree there split beneath it.
    /// Expected O(log n) with O(1) below the insertion point, where splitting the whole tree and
    /// merging the halves back walked three paths of the tree (a third of a cache miss with
    /// 2 * 10^5 regions).
    private static func insert(_ node: Link, into t: Link?) -> Link {
        guard let t else { return node }
        let nodeFirst = node._withUnsafeGuaranteedRef { $0.priority } > t._withUnsafeGuaranteedRef { $0.priority }
        if nodeFirst {
            let (l, r) = split(t, before: node)
            node._withUnsafeGuaranteedRef {
                $0.left = l
                $0.right = r
            }
            update(node)
            return node
        }
        // Above the insertion point a link changes only where the node took a child's place, and
        // a subtree's largest end only when the node's is larger: store nothing else, so the
        // path's cache lines stay clean.
        if less(node, t) {
            let old = t._withUnsafeGuaranteedRef { $0.left }
            let left = insert(node, into: old)
            if left.toOpaque() != old?.toOpaque() { t._withUnsafeGuaranteedRef { $0.left = left } }
        } else {
            let old = t._withUnsafeGuaranteedRef { $0.right }
            let right = insert(node, into: old)
            if right.toOpaque() != old?.toOpaque() { t._withUnsafeGuaranteedRef { $0.right = right } }
        }
        let last = node._withUnsafeGuaranteedRef { $0.range.last }
        t._withUnsafeGuaranteedRef { if last > $0.maxLast { $0.maxLast = last } }  // one more node below
        return t
    }

    /// Splits `t` into the keys before `key`'s and the rest.
    private static func split(_ t: Link?, before key: Link) -> (Link?, Link?) {
        guard let t else { return (nil, nil) }
        if less(t, key) {
            let (l, r) = split(t._withUnsafeGuaranteedRef { $0.right }, before: key)
            t._withUnsafeGuaranteedRef { $0.right = l }
            update(t)
            return (t, r)
        } else {
            let (l, r) = split(t._withUnsafeGuaranteedRef { $0.left }, before: key)
            t._withUnsafeGuaranteedRef { $0.left = r }
            update(t)
            return (l, t)
        }
    }

    /// `t` without `node` (which is in it): `node`'s place goes to the merge of its children.
    /// Above that place only the one changed link is stored, and a subtree's largest end is
    /// recomputed only where it may have been `node`'s (`removedLast`).
    private static func remove(_ node: Link, from t: Link?) -> Link? {
        remove(node, removedLast: node._withUnsafeGuaranteedRef { $0.range.last }, from: t)
    }

    private static func remove(_ node: Link, removedLast: UInt, from t: Link?) -> Link? {
        guard let t else { return nil }
        if t.toOpaque() == node.toOpaque() {
            return t._withUnsafeGuaranteedRef { merge($0.left, $0.right) }
        }
        if less(node, t) {
            let old = t._withUnsafeGuaranteedRef { $0.left }
            let left = remove(node, removedLast: removedLast, from: old)
            if left?.toOpaque() != old?.toOpaque() { t._withUnsafeGuaranteedRef { $0.left = left } }
        } else {
            let old = t._withUnsafeGuaranteedRef { $0.right }
            let right = remove(node, removedLast: removedLast, from: old)
            if right?.toOpaque() != old?.toOpaque() { t._withUnsafeGuaranteedRef { $0.right = right } }
        }
        if t._withUnsafeGuaranteedRef({ $0.maxLast == removedLast }) { update(t) }
        return t
    }

    /// Joins two treaps where every key of `a` is below every key of `b`.
    private static func merge(_ a: Link?, _ b: Link?) -> Link? {
        guard let a else { return b }
        guard let b else { return a }
        let aFirst = a._withUnsafeGuaranteedRef { $0.priority } > b._withUnsafeGuaranteedRef { $0.priority }
        if aFirst {
            let right = merge(a._withUnsafeGuaranteedRef { $0.right }, b)
            a._withUnsafeGuaranteedRef { $0.right = right }
            update(a)
            return a
        } else {
            let left = merge(a, b._withUnsafeGuaranteedRef { $0.left })
            b._withUnsafeGuaranteedRef { $0.left = left }
            update(b)
            return b
        }
    }
}
