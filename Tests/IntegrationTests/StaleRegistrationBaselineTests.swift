import MemoryMapping
import Testing
import Verbs

extension RxeIntegration {
    /// Today's bug, asserted: with no registration cache between the application and the
    /// device, an MR outlives the mapping it was made for. The registration cache's tests turn
    /// this around.
    @Suite struct StaleRegistrationBaseline {
        @Test("RDMA WRITE through an MR whose memory was unmapped and mapped again lands in the old pages")
        func writeThroughStaleRegistrationMissesNewMemory() throws {
            let loopback = try Loopback()
            let length = 64 * 1024
            let buffer = try AnonymousMapping(length: length)
            let staleRegion = try loopback.domain.registerMemory(buffer.bytes, access: .rdma)

            try buffer.replaceWithFreshMapping()
            #expect(buffer.address == staleRegion.address, "the new mapping must reuse the address")

            let payload = try AnonymousMapping(length: length)
            payload.fill { _ in 0xC3 }
            let payloadRegion = try loopback.domain.registerMemory(payload.bytes, access: .rdma)
            let written = try loopback.write(from: payloadRegion, to: staleRegion.address, rkey: staleRegion.rkey)

            // The device reports success...
            #expect(written.status == .success)
            // ...the application's new memory at that address is untouched...
            #expect(buffer.count { $0 == 0xC3 } == 0)
            // ...because the data went to the old pages the stale MR still pins.
            let probe = try AnonymousMapping(length: length)
            let probeRegion = try loopback.domain.registerMemory(probe.bytes, access: .rdma)
            let read = try loopback.read(into: probeRegion, from: staleRegion.address, rkey: staleRegion.rkey)
            #expect(read.status == .success)
            #expect(probe.count { $0 == 0xC3 } == length)
        }
    }
}
