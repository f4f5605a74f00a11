@testable import Monitors
import Testing

/// The union of a granule's registered pieces, checked against a page-by-page model.
@Suite struct RegisteredPiecesTests {
    private let page: UInt = 4096

    private func pages(_ first: UInt, _ count: UInt) -> PageRange {
        PageRange(start: first * page, end: (first + count) * page)
    }

    @Test("inserts merge what overlaps or touches; removes split; the result is the union, sorted and disjoint")
    func againstAModel() {
        var pieces = RegisteredPieces()
        var model = Set<UInt>()
        var random = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let range = pages(UInt.random(in: 0..<64, using: &random), UInt.random(in: 1...9, using: &random))
            let pagesOfRange = Set(stride(from: range.start / page, to: range.end / page, by: 1))
            if Bool.random(using: &random) {
                pieces.insert(range)
                model.formUnion(pagesOfRange)
            } else {
                pieces.remove(range)
                model.subtract(pagesOfRange)
            }
            let ranges = pieces.ranges
            // Sorted, disjoint and not touching (touching ones are merged).
            #expect(zip(ranges, ranges.dropFirst()).allSatisfy { $0.end < $1.start })
            #expect(ranges.allSatisfy { $0.start < $0.end })
            let covered = Set(ranges.flatMap { stride(from: $0.start / page, to: $0.end / page, by: 1) })
            #expect(covered == model)
            if covered != model { return }
        }
    }

    @Test("overlaps with a range: one run per disjoint piece, clipped to the range")
    func overlaps() {
        var pieces = RegisteredPieces()
        pieces.insert(pages(0, 2))
        pieces.insert(pages(4, 2))
        pieces.insert(pages(2, 1))   // touches the first: merged to 0..<3
        pieces.insert(pages(10, 3))
        #expect(pieces.ranges == [pages(0, 3), pages(4, 2), pages(10, 3)])
        var runs: [PageRange] = []
        pieces.forEachOverlap(with: pages(1, 10)) { runs.append($0) }
        #expect(runs == [pages(1, 2), pages(4, 2), pages(10, 1)])
        var none: [PageRange] = []
        pieces.forEachOverlap(with: pages(3, 1)) { none.append($0) }
        pieces.forEachOverlap(with: pages(13, 5)) { none.append($0) }
        #expect(none.isEmpty)
        pieces.remove(pages(1, 11))
        #expect(pieces.ranges == [pages(0, 1), pages(12, 1)])
    }
}
