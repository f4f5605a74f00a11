@testable import Monitors
import NotifierEngine
import Testing

/// What a watch learned from the kernel is kept only if nothing was forgotten and no window
/// opened since it asked: the interleaving a hooked `mmap(MAP_FIXED)` makes with a racing watch
/// (probe of the old mapping, the hook's forgets, the real call, then the watch's insert),
/// forced step by step.
@Suite struct KnownMemoryStampTests {
    private let granule: UInt = 2 << 20
    private let pages = PageRange(start: 4 << 20, end: (4 << 20) + 65536)

    @Test("pages asked about before a forget are not kept; asked about after it, they are")
    func forgetBetweenAskAndInsert() {
        let space = AddressSpace()
        let known = KnownMemory(granuleSize: granule)
        let stamp = known.stamp(in: space)            // the watch: before its probe
        known.forget(start: pages.start, end: pages.end)  // the hook, before and after the real call
        known.insert(pages, checkedAfter: stamp, in: space)
        #expect(!known.validated(pages), "the probe saw the mapping the hook replaced")
        known.insert(pages, checkedAfter: known.stamp(in: space), in: space)
        #expect(known.validated(pages))
    }

    @Test("a forget elsewhere also refuses the insert (conservative), and a window open at the stamp does")
    func anyForgetOrOpenWindowRefuses() throws {
        let space = AddressSpace()
        let known = KnownMemory(granuleSize: granule)
        let stamp = known.stamp(in: space)
        known.forget(start: 64 << 20, end: (64 << 20) + 4096)
        known.insert(pages, checkedAfter: stamp, in: space)
        #expect(!known.validated(pages))
        let window = space.beginInvalidation()
        let during = known.stamp(in: space)
        known.insert(pages, checkedAfter: during, in: space)
        #expect(!known.validated(pages), "asked while an unmap's window was open")
        window.end()
        known.insert(pages, checkedAfter: during, in: space)
        #expect(!known.validated(pages), "the window closed since: the sequence moved")
    }
}
