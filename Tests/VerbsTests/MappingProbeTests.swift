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

    @Test func unmappedRange() throws {
        let mapping = try AnonymousMapping(length: 8192)
        let address = mapping.address
        try mapping.unmap()
        let error = MappingProbe.explain(efault, address: address, length: 8192, access: .rdma)
        #expect(error.detail == "nothing is mapped at 0x\(String(address, radix: 16))")
    }

    @Test func holeInTheMiddle() throws {
        let page = AnonymousMapping.pageSize
        let mapping = try AnonymousMapping(length: 3 * page)
        let hole = mapping.address + UInt(page)
        #expect(munmap(UnsafeMutableRawPointer(bitPattern: hole), page) == 0)
        let error = MappingProbe.explain(efault, address: mapping.address, length: 3 * page, access: .rdma)
        #expect(error.detail == "the range has an unmapped page at 0x\(String(hole, radix: 16))")
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
