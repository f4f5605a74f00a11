/// A page-aligned byte range [start, end).
struct PageRange: Hashable, Sendable {
    var start: UInt
    var end: UInt
    var length: UInt { end - start }

    /// The start of every `granuleSize` granule this range touches.
    func granuleStarts(granuleSize: UInt) -> StrideTo<UInt> {
        stride(from: start & ~(granuleSize - 1), to: end, by: Int(granuleSize))
    }

    /// The part of this range inside the granule at `granule`.
    func clipped(toGranule granule: UInt, granuleSize: UInt) -> PageRange {
        PageRange(start: max(start, granule), end: min(end, granule &+ granuleSize))
    }

    /// The overlap of two ranges, nil when they do not meet.
    func intersection(_ other: PageRange) -> PageRange? {
        let overlap = PageRange(start: max(start, other.start), end: min(end, other.end))
        return overlap.start < overlap.end ? overlap : nil
    }

    /// Whether `other` lies wholly inside this range.
    func contains(_ other: PageRange) -> Bool { start <= other.start && other.end <= end }
}
