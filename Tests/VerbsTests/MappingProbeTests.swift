#if canImport(Glibc)
import Glibc
#endif
import MemoryMapping
import Testing
@testable import Verbs

/// The words an `ibv_reg_mr` EFAULT is turned into, checked against real mappings.
@Suite struct MappingProbeTests {
    let efault = VerbsError(call: "ibv_reg_mr", argument: "address: 0x0, length: 1", errno: .badAddress)

    @Test func nullAddress() {
        let error = MappingProbe.explain(efault, address: 0, length: 4096, access: .rdma)
        #expect(error.argument == "address: NULL")
    }

    /// Tests run in parallel in one process, and the kernel hands a freed range to the next mmap
    /// of its size: a range a test unmapped may be another test's memory by the time it is probed.
    /// Each such test probes until the range was still unmapped after the probe (bounded).
    static func stillUnmapped(_ address: UInt, _ length: Int) -> Bool {
        msync(UnsafeMutableRawPointer(bitPattern: address), length, MS_ASYNC) == -1 && errno == ENOMEM
    }

    @Test func unmappedRange() throws {
        var detail: String?, expected = ""
        for _ in 0..<20 {
            let mapping = try AnonymousMapping(length: 8192)
            let address = mapping.address
            try mapping.unmap()
            detail = MappingProbe.explain(efault, address: address, length: 8192, access: .rdma).detail
            expected = "nothing is mapped at 0x\(String(address, radix: 16))"
            if Self.stillUnmapped(address, 8192) { break }
        }
        #expect(detail == expected)
    }

    @Test func holeInTheMiddle() throws {
        let page = AnonymousMapping.pageSize
        var detail: String?, expected = ""
        for _ in 0..<20 {
            // Raw pages, each unmapped on its own below: the hole may be another test's memory by
            // then, and must never be unmapped from here.
            guard let raw = mmap(nil, 3 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
                  raw != MAP_FAILED else { throw MappingError.fromErrno("mmap", argument: "length: \(3 * page)") }
            let start = UInt(bitPattern: raw)
            let hole = start + UInt(page)
            #expect(munmap(UnsafeMutableRawPointer(bitPattern: hole), page) == 0)
            detail = MappingProbe.explain(efault, address: start, length: 3 * page, access: .rdma).detail
            expected = "the range has an unmapped page at 0x\(String(hole, radix: 16))"
            let undisturbed = Self.stillUnmapped(hole, page)
            munmap(raw, page)
            munmap(UnsafeMutableRawPointer(bitPattern: hole + UInt(page)), page)
            if undisturbed { break }
        }
        #expect(detail == expected)
    }

    @Test func readOnlyMemoryForWrite() throws {
        let mapping = try AnonymousMapping(length: 4096)
        try mapping.protect(PROT_READ)
        let error = MappingProbe.explain(efault, address: mapping.address, length: 4096, access: .localWrite)
        #expect(error.argument == "access: [localWrite]")
        #expect(error.detail?.contains("read-only") == true)
        // Read access to read-only memory is not what failed: the error is left as it was.
        #expect(MappingProbe.explain(efault, address: mapping.address, length: 4096, access: .remoteRead) == efault)
    }

    @Test func otherErrnosAreLeftAlone() {
        let einval = VerbsError(call: "ibv_reg_mr", errno: .invalidArgument)
        #expect(MappingProbe.explain(einval, address: 0, length: 1, access: .rdma) == einval)
    }
}
