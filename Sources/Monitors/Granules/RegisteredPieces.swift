/// The page ranges of one granule registered one by one (a granule that cannot be registered
/// whole), kept as their union: sorted, disjoint, touching ranges merged.
///
/// Why a union and not a list of what each watch registered: buffers come and go at the same
/// addresses with other lengths, and a list grows by one overlapping entry each time, so an
/// unmap there issued one `UFFDIO_UNREGISTER` per entry it overlapped (measured in the churn
/// figure: 6.5 per unmap, a third of the loop). The union needs one per disjoint run, and
/// taking out what an unmap removed keeps it as small as what is registered now.
struct RegisteredPieces: Sendable, Sequence {
    private(set) var ranges: [PageRange] = []

    func makeIterator() -> IndexingIterator<[PageRange]> { ranges.makeIterator() }

    /// Adds `range`, merging it with every range it overlaps or touches.
    mutating func insert(_ range: PageRange) {
        guard range.start < range.end else { return }
        let first = ranges.partitionPoint { $0.end >= range.start }
        var merged = range
        var last = first
        while last < ranges.count && ranges[last].start <= range.end {
            merged = PageRange(start: Swift.min(merged.start, ranges[last].start), end: Swift.max(merged.end, ranges[last].end))
            last += 1
        }
        ranges.replaceSubrange(first..<last, with: CollectionOfOne(merged))
    }

    /// Takes `range` out (the pages were unmapped, which unregistered them).
    mutating func remove(_ range: PageRange) {
        guard range.start < range.end else { return }
        let first = ranges.partitionPoint { $0.end > range.start }
        var last = first
        while last < ranges.count && ranges[last].start < range.end { last += 1 }
        guard first < last else { return }
        let left = PageRange(start: ranges[first].start, end: range.start)
        let right = PageRange(start: range.end, end: ranges[last - 1].end)
        // In place where the array has the slots (no allocation on the unmap path).
        var next = first
        if left.start < left.end { ranges[next] = left; next += 1 }
        if right.start < right.end {
            if next < last { ranges[next] = right } else { ranges.insert(right, at: next) }
            next += 1
        }
        if next < last { ranges.removeSubrange(next..<last) }
    }

    /// Calls `body` with each registered run inside `range`.
    func forEachOverlap(with range: PageRange, _ body: (PageRange) -> Void) {
        var index = ranges.partitionPoint { $0.end > range.start }
        while index < ranges.count && ranges[index].start < range.end {
            if let overlap = ranges[index].intersection(range) { body(overlap) }
            index += 1
        }
    }
}

extension Array {
    /// The first index whose element satisfies `predicate`, for a predicate that is false and
    /// then true along the array (binary search).
    fileprivate func partitionPoint(_ predicate: (Element) -> Bool) -> Int {
        var low = 0
        var high = count
        while low < high {
            let middle = (low + high) / 2
            if predicate(self[middle]) { high = middle } else { low = middle + 1 }
        }
        return low
    }
}
