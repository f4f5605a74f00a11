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
/// The tree holds one retain per node (taken by `AddressSpace` at insert, dropped after the
/// removal, outside the lock); links are `unowned(unsafe)` and cost no reference counting.
/// Mutated only under the space's interval lock; walked without it only while the space's
/// sequence is odd, when every change is deferred.
struct IntervalTree {
    typealias Node = IntervalSubscription

    private(set) unowned(unsafe) var root: Node? = nil
    private(set) var count = 0
    private var rng: UInt64 = 0x9E37_79B9_7F4A_7C15

    var isEmpty: Bool { count == 0 }

    /// Inserts `node` (not in any tree).
    mutating func insert(_ node: Node) {
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17
        node.priority = UInt32(truncatingIfNeeded: rng >> 32)
        node.left = nil
        node.right = nil
        node.maxLast = node.range.last
        let (l, r) = Self.split(root, before: node)
        root = Self.merge(Self.merge(l, node), r)
        count += 1
    }

    /// Removes `node`, which must be in this tree.
    mutating func remove(_ node: Node) {
        root = Self.remove(node, from: root)
        node.left = nil
        node.right = nil
        count -= 1
    }

    /// The first node (in key order) overlapping `start...last`, if any.
    func firstOverlap(start: UInt, last: UInt) -> Node? {
        var found: Node?
        Self.forEachOverlap(root, start: start, last: last) { node in
            found = node
            return false
        }
        return found
    }

    /// Calls `body` for each node of the tree rooted at `root` overlapping `start...last`, in key
    /// order, until it returns false; returns false when stopped. Reads links only: safe without
    /// the lock while the tree is frozen (see the type's comment).
    @discardableResult
    static func forEachOverlap(_ root: Node?, start: UInt, last: UInt, _ body: (Node) -> Bool) -> Bool {
        var t = root
        while let n = t {
            if n.maxLast < start { return true }  // nothing below reaches the query
            if !forEachOverlap(n.left, start: start, last: last, body) { return false }
            if n.range.start > last { return true }  // this node and everything right start after it
            if n.range.last >= start, !body(n) { return false }
            t = n.right
        }
        return true
    }

    /// Key order: start, then identity (two subscriptions may share a start).
    @inline(__always)
    private static func less(_ a: Node, _ b: Node) -> Bool {
        a.range.start < b.range.start || (a.range.start == b.range.start && ObjectIdentifier(a) < ObjectIdentifier(b))
    }

    @inline(__always)
    private static func update(_ t: Node) {
        var m = t.range.last
        if let l = t.left { m = max(m, l.maxLast) }
        if let r = t.right { m = max(m, r.maxLast) }
        t.maxLast = m
    }

    /// Splits `t` into the keys before `key`'s and the rest.
    private static func split(_ t: Node?, before key: Node) -> (Node?, Node?) {
        guard let t else { return (nil, nil) }
        if less(t, key) {
            let (l, r) = split(t.right, before: key)
            t.right = l
            update(t)
            return (t, r)
        } else {
            let (l, r) = split(t.left, before: key)
            t.left = r
            update(t)
            return (l, t)
        }
    }

    /// `t` without `node` (which is in it): `node`'s place goes to the merge of its children.
    private static func remove(_ node: Node, from t: Node?) -> Node? {
        guard let t else { return nil }
        if t === node { return merge(t.left, t.right) }
        if less(node, t) { t.left = remove(node, from: t.left) } else { t.right = remove(node, from: t.right) }
        update(t)
        return t
    }

    /// Joins two treaps where every key of `a` is below every key of `b`.
    private static func merge(_ a: Node?, _ b: Node?) -> Node? {
        guard let a else { return b }
        guard let b else { return a }
        if a.priority > b.priority {
            a.right = merge(a.right, b)
            update(a)
            return a
        } else {
            b.left = merge(a, b.left)
            update(b)
            return b
        }
    }
}
