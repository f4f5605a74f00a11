import MemoryMapping
import Testing
import Verbs

extension RxeIntegration {
    /// RDMA WRITE, RDMA READ and SEND/RECV over a real RC queue pair, data checked byte for byte.
    @Suite struct Transfers {
        @Test("RC loopback RDMA WRITE then READ", arguments: [4096, 1 << 20])
        func writeThenRead(length: Int) throws {
            let loopback = try Loopback()
            let source = try AnonymousMapping(length: length)
            let target = try AnonymousMapping(length: length)
            let readBack = try AnonymousMapping(length: length)
            source.fill { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 8) }
            let sourceRegion = try loopback.domain.registerMemory(source.bytes, access: .rdma)
            let targetRegion = try loopback.domain.registerMemory(target.bytes, access: .rdma)
            let readRegion = try loopback.domain.registerMemory(readBack.bytes, access: .rdma)

            let written = try loopback.write(from: sourceRegion, to: targetRegion.address, rkey: targetRegion.rkey)
            #expect(written.status == .success)
            #expect(target.equals(source), "RDMA WRITE of \(length) bytes did not land intact")

            let read = try loopback.read(into: readRegion, from: targetRegion.address, rkey: targetRegion.rkey)
            #expect(read.status == .success)
            #expect(readBack.equals(source), "RDMA READ of \(length) bytes did not return the data")
        }

        @Test("SEND/RECV with a scatter-gather list on both sides")
        func sendReceiveScatterGather() throws {
            let loopback = try Loopback()
            let outgoing = try AnonymousMapping(length: 8192)
            let incoming = try AnonymousMapping(length: 8192)
            outgoing.fill { UInt8(truncatingIfNeeded: $0 ^ 0x5A) }
            let sendRegion = try loopback.domain.registerMemory(outgoing.bytes, access: .localWrite)
            let receiveRegion = try loopback.domain.registerMemory(incoming.bytes, access: .localWrite)

            // Receive into two pieces: 1000 bytes at offset 0 and 3000 at offset 4096.
            try loopback.queuePair.postReceive([
                ScatterGatherElement(region: receiveRegion, offset: 0, length: 1000),
                ScatterGatherElement(region: receiveRegion, offset: 4096, length: 3000),
            ], id: 10)
            // Send from two pieces: 2500 bytes at offset 100 and 1500 at offset 5000.
            try loopback.queuePair.postSend([
                ScatterGatherElement(region: sendRegion, offset: 100, length: 2500),
                ScatterGatherElement(region: sendRegion, offset: 5000, length: 1500),
            ], id: 11)

            let completions = try loopback.queue.waitForCompletions(2)
            #expect(completions.allSatisfy { $0.status == .success }, "\(completions)")
            let receive = try #require(completions.first { $0.id == 10 })
            #expect(receive.byteLength == 4000)

            let sent = Array(outgoing.bytes[100..<2600]) + Array(outgoing.bytes[5000..<6500])
            let received = Array(incoming.bytes[0..<1000]) + Array(incoming.bytes[4096..<7096])
            #expect(sent == received, "the message was not reassembled in order")
        }
    }
}
