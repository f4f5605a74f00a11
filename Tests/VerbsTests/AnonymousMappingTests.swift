#if canImport(Glibc)
import Glibc
#endif
import MemoryMapping
import Testing

@Suite struct AnonymousMappingTests {
    @Test func freshMappingAtTheSameAddressHasNewZeroedPages() throws {
        let mapping = try AnonymousMapping(length: 65536)
        let address = mapping.address
        mapping.fill { _ in 0x77 }
        try mapping.replaceWithFreshMapping()
        #expect(mapping.address == address)
        #expect(mapping.count { $0 == 0 } == 65536)
    }

    @Test func dontNeedGivesZeroedPagesOnNextTouch() throws {
        let mapping = try AnonymousMapping(length: 8192)
        mapping.fill { _ in 1 }
        try mapping.advise(MADV_DONTNEED)
        #expect(mapping.count { $0 == 0 } == 8192)
    }

    @Test func remapKeepsTheBytes() throws {
        let mapping = try AnonymousMapping(length: 4096)
        mapping.fill { UInt8(truncatingIfNeeded: $0) }
        try mapping.remap(to: 1 << 20)
        #expect(mapping.length == 1 << 20)
        #expect(mapping.bytes[255] == 255)
    }

    @Test func zeroLengthIsAClearError() {
        let error = #expect(throws: MappingError.self) { try AnonymousMapping(length: 0) }
        #expect(error?.description == "mmap(length: 0): Invalid argument")
    }
}
