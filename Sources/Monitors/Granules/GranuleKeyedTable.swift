/// A hash table keyed by granule start, for the monitor's bookkeeping: open addressing with
/// linear probing, a multiplicative hash and backward-shift deletion (no tombstones). Granule
/// starts are multiples of a power of two, which a multiplicative hash spreads well; a watch in
/// a validated granule looks its granule up twice, and the standard `Dictionary`'s SipHash made
/// those lookups most of a cache miss's watch (measured: about 200 ns of 380).
struct GranuleKeyedTable<Value: Sendable>: Sendable {
    private var keys: [UInt]
    private var values: [Value?]
    private var used = 0
    /// `UInt.max` marks an empty slot: no granule starts there (it would wrap).
    private static var empty: UInt { .max }

    init() {
        keys = Array(repeating: Self.empty, count: 16)
        values = Array(repeating: nil, count: 16)
    }

    var count: Int { used }
    var isEmpty: Bool { used == 0 }

    @inline(__always)
    private func home(_ key: UInt) -> Int {
        Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> 17) & (keys.count - 1)
    }

    @inline(__always)
    private func slot(of key: UInt) -> Int? {
        var index = home(key)
        while keys[index] != Self.empty {
            if keys[index] == key { return index }
            index = (index + 1) & (keys.count - 1)
        }
        return nil
    }

    subscript(key: UInt) -> Value? {
        get { slot(of: key).flatMap { values[$0] } }
        set {
            if let newValue {
                if let index = slot(of: key) {
                    values[index] = newValue
                    return
                }
                if (used + 1) * 2 > keys.count { grow() }
                var index = home(key)
                while keys[index] != Self.empty { index = (index + 1) & (keys.count - 1) }
                keys[index] = key
                values[index] = newValue
                used += 1
            } else {
                _ = removeValue(forKey: key)
            }
        }
    }

    /// Changes the value of `key` in place, if present; returns whether it was.
    @discardableResult
    mutating func update(_ key: UInt, _ body: (inout Value) -> Void) -> Bool {
        guard let index = slot(of: key), values[index] != nil else { return false }
        body(&values[index]!)
        return true
    }

    func contains(_ key: UInt) -> Bool { slot(of: key) != nil }

    @discardableResult
    mutating func removeValue(forKey key: UInt) -> Value? {
        guard var hole = slot(of: key) else { return nil }
        let removed = values[hole]
        keys[hole] = Self.empty
        values[hole] = nil
        used -= 1
        // Backward shift: move later entries of the probe run into the hole when their home
        // does not lie strictly between the hole and their slot.
        var index = (hole + 1) & (keys.count - 1)
        while keys[index] != Self.empty {
            let wanted = home(keys[index])
            let between = hole <= index ? (hole < wanted && wanted <= index) : (hole < wanted || wanted <= index)
            if !between {
                keys[hole] = keys[index]
                values[hole] = values[index]
                keys[index] = Self.empty
                values[index] = nil
                hole = index
            }
            index = (index + 1) & (keys.count - 1)
        }
        return removed
    }

    mutating func removeAll() {
        for index in keys.indices where keys[index] != Self.empty {
            keys[index] = Self.empty
            values[index] = nil
        }
        used = 0
    }

    /// Every (key, value), in no particular order.
    var entries: [(key: UInt, value: Value)] {
        keys.indices.compactMap { index in
            guard keys[index] != Self.empty, let value = values[index] else { return nil }
            return (keys[index], value)
        }
    }

    /// Calls `body` with every key and its value in place, in no particular order, until it
    /// returns false; returns false when stopped. Allocates nothing (the hooks walk the table
    /// this way before the call they intercept).
    @discardableResult
    mutating func updateEach(_ body: (UInt, inout Value) -> Bool) -> Bool {
        for index in keys.indices where keys[index] != Self.empty && values[index] != nil {
            if !body(keys[index], &values[index]!) { return false }
        }
        return true
    }

    /// Removes every key for which `shouldRemove` is true; allocates nothing. A removal shifts
    /// later entries of its probe run back into the hole, so the same slot is looked at again;
    /// a run that wraps moves only entries already looked at.
    mutating func removeAll(where shouldRemove: (UInt) -> Bool) {
        var index = 0
        while index < keys.count {
            let key = keys[index]
            if key != Self.empty, shouldRemove(key) {
                removeValue(forKey: key)
                continue
            }
            index += 1
        }
    }

    private mutating func grow() {
        let old = zip(keys, values)
        keys = Array(repeating: Self.empty, count: keys.count * 2)
        values = Array(repeating: nil, count: keys.count)
        used = 0
        for (key, value) in old where key != Self.empty {
            if let value { self[key] = value }
        }
    }
}
