import Foundation
import MemoryMapping
import Testing
import Verbs

extension RxeIntegration {
    /// rdma_cm: a listener and a client in one process exchange a message over rxe.
    @Suite struct ConnectionManager {
        /// rxe's link-local GID on the dummy netdev the VM script creates (RXE-VM.md).
        static let address = "fe80::ff:fe00:1%dummy0"

        @Test("listener and client exchange a message both ways")
        func exchange() throws {
            let listener = try ConnectionListener(address: Self.address, port: 0)
            let port = listener.port
            #expect(port != 0)

            let accepting = BackgroundThread { try listener.accept(timeout: .seconds(20)) }
            let client = try Connection.connect(to: Self.address, port: port, timeout: .seconds(20))
            let server = try accepting.join()

            try Self.send("hello from the client", from: client, to: server)
            try Self.send("hello back from the server", from: server, to: client)
            client.disconnect()
            client.disconnect()  // a second disconnect is harmless
        }

        @Test("connecting where nobody listens is a clear error, not a hang")
        func nobodyListening() throws {
            #expect(throws: VerbsError.self) {
                try Connection.connect(to: Self.address, port: 1, timeout: .seconds(10))
            }
        }

        static func send(_ text: String, from sender: Connection, to receiver: Connection) throws {
            let outgoing = try AnonymousMapping(length: 4096)
            let incoming = try AnonymousMapping(length: 4096)
            let bytes = Array(text.utf8)
            outgoing.bytes.copyBytes(from: bytes)
            let sendRegion = try sender.protectionDomain.registerMemory(outgoing.bytes, access: .localWrite)
            let receiveRegion = try receiver.protectionDomain.registerMemory(incoming.bytes, access: .localWrite)
            try receiver.queuePair.postReceive([ScatterGatherElement(region: receiveRegion)], id: 1)
            try sender.queuePair.postSend([ScatterGatherElement(region: sendRegion, length: bytes.count)], id: 2)
            try sender.completionQueue.waitForSuccess(of: 2)
            let completion = try receiver.completionQueue.waitForSuccess(of: 1)
            #expect(Int(completion.byteLength) == bytes.count)
            #expect(String(decoding: incoming.bytes.prefix(bytes.count), as: UTF8.self) == text)
        }
    }
}
