/// An interval index (the kernel's augmented rbtree `interval_tree`): a treap ordered by
/// (start, handle) where each node also keeps the largest `last` of its subtree, so an overlap
/// query visits O(log n + k) nodes. Nodes live in one array addressed by handle (no per-node
/// allocation or reference counting); removed handles are reused.
///
/// Nothing here calls `free()`: when an array must grow, its old buffer is handed to the
/// caller's `Retired` to be released after the caller drops its lock. `free()` can trim the
/// heap with `madvise`/`munmap` on memory a userfaultfd monitor watches and then wait for that
/// monitor, which may itself be waiting for the lock (DESIGN.md, monitor deadlocks).
struct IntervalTree<Value: Sendable>: Sendable {
    /// Buffers replaced under a lock, released when this goes out of scope (after unlocking).
    struct Retired {
        fileprivate var nodes: [Node]? = nil
        fileprivate var handles: [Int32]? = nil
    }

    fileprivate struct Node: Sendable {
        var start: UInt
        var last: UInt
        var maxLast: UInt
        var left: Int32
        var right: Int32
        var priority: UInt32
        var value: Value?
    }

    private var nodes: [Node] = []
    private var freeHandles: [Int32] = []
    private var root: Int32 = -1
    private var rng: UInt64 = 0x9E37_79B9_7F4A_7C15
    private(set) var count = 0

    var isEmpty: Bool { count == 0 }

    /// Grows the node array (and the free-handle array, kept at the same capacity so that
    /// `remove` never reallocates it) without freeing the old buffers here.
    private mutating func growIfFull(_ retired: inout Retired) {
        guard freeHandles.isEmpty, nodes.count == nodes.capacity else { return }
        let capacity = max(16, nodes.capacity * 2)
        var grownNodes: [Node] = []
        grownNodes.reserveCapacity(capacity)
        grownNodes.append(contentsOf: nodes)
        var grownHandles: [Int32] = []
        grownHandles.reserveCapacity(grownNodes.capacity)  // never less than the nodes: remove must not regrow it
        grownHandles.append(contentsOf: freeHandles)
        retired.nodes = nodes
        retired.handles = freeHandles
        nodes = grownNodes
        freeHandles = grownHandles
    }

    /// Inserts `start...last` and returns a handle for `remove`.
    mutating func insert(start: UInt, last: UInt, value: Value, retired: inout Retired) -> Int {
        growIfFull(&retired)
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17
        let node = Node(start: start, last: last, maxLast: last, left: -1, right: -1,
                        priority: UInt32(truncatingIfNeeded: rng >> 32), value: value)
        let handle: Int32
        if let reused = freeHandles.popLast() {
            handle = reused
            nodes[Int(handle)] = node
        } else {
            handle = Int32(nodes.count)
            nodes.append(node)
        }
        let (l, r) = split(root, start: start, handle: handle)
        root = merge(merge(l, handle), r)
        count += 1
        return Int(handle)
    }

    /// Removes the node `handle` (returned by `insert`); false if it is not in the tree.
    @discardableResult
    mutating func remove(handle: Int) -> Bool {
        guard handle >= 0, handle < nodes.count, nodes[handle].value != nil else { return false }
        let h = Int32(handle)
        let start = nodes[handle].start
        let (l, rest) = split(root, start: start, handle: h)
        let (mid, r) = split(rest, start: start, handle: h + 1)
        // `mid` holds exactly the nodes with key (start, h): this one.
        _ = mid
        root = merge(l, r)
        nodes[handle].value = nil
        nodes[handle].left = -1
        nodes[handle].right = -1
        freeHandles.append(h)
        count -= 1
        return true
    }

    /// `insert` for callers without a lock to respect (tests).
    mutating func insert(start: UInt, last: UInt, value: Value) -> Int {
        var retired = Retired()
        return insert(start: start, last: last, value: value, retired: &retired)
    }

    /// Calls `body` for every stored interval overlapping `start...last`.
    func forEachOverlap(start: UInt, last: UInt, _ body: (Value) -> Void) {
        nodes.withUnsafeBufferPointer { buffer in
            Self.visit(buffer, root, start, last, body)
        }
    }

    /// The overlapping values, in one exactly sized allocation (counted first): no buffer is
    /// regrown, so nothing is freed while the caller holds its lock.
    func overlaps(start: UInt, last: UInt) -> [Value] {
        var count = 0
        forEachOverlap(start: start, last: last) { _ in count += 1 }
        if count == 0 { return [] }
        var result: [Value] = []
        result.reserveCapacity(count)
        forEachOverlap(start: start, last: last) { result.append($0) }
        return result
    }

    /// Reads node fields through the buffer (no copy of a node, so no retain of its value
    /// for nodes that are only passed through).
    private static func visit(_ nodes: UnsafeBufferPointer<Node>, _ t: Int32, _ qs: UInt, _ ql: UInt,
                              _ body: (Value) -> Void) {
        var t = t
        while t >= 0 {
            let i = Int(t)
            if nodes[i].maxLast < qs { return }  // nothing below reaches the query
            visit(nodes, nodes[i].left, qs, ql, body)
            if nodes[i].start > ql { return }    // this node and everything right start after it
            if nodes[i].last >= qs, let v = nodes[i].value { body(v) }
            t = nodes[i].right
        }
    }

    private func less(_ a: Int32, start: UInt, handle: Int32) -> Bool {
        let n = nodes[Int(a)]
        return n.start < start || (n.start == start && a < handle)
    }

    private mutating func update(_ t: Int32) {
        var m = nodes[Int(t)].last
        let l = nodes[Int(t)].left, r = nodes[Int(t)].right
        if l >= 0 { m = max(m, nodes[Int(l)].maxLast) }
        if r >= 0 { m = max(m, nodes[Int(r)].maxLast) }
        nodes[Int(t)].maxLast = m
    }

    /// Splits `t` into keys < (start, handle) and keys >= it.
    private mutating func split(_ t: Int32, start: UInt, handle: Int32) -> (Int32, Int32) {
        if t < 0 { return (-1, -1) }
        if less(t, start: start, handle: handle) {
            let (l, r) = split(nodes[Int(t)].right, start: start, handle: handle)
            nodes[Int(t)].right = l
            update(t)
            return (t, r)
        } else {
            let (l, r) = split(nodes[Int(t)].left, start: start, handle: handle)
            nodes[Int(t)].left = r
            update(t)
            return (l, t)
        }
    }

    /// Joins two treaps where every key of `a` is below every key of `b`.
    private mutating func merge(_ a: Int32, _ b: Int32) -> Int32 {
        if a < 0 { return b }
        if b < 0 { return a }
        if nodes[Int(a)].priority > nodes[Int(b)].priority {
            nodes[Int(a)].right = merge(nodes[Int(a)].right, b)
            update(a)
            return a
        } else {
            nodes[Int(b)].left = merge(a, nodes[Int(b)].left)
            update(b)
            return b
        }
    }
}

