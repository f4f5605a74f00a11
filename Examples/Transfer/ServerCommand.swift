#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import MemoryMapping
import Verbs

/// The receiving side: listens, and for each client registers window-many landing slots once,
/// then checks each message's CRC-32 against the one the client wrote with it, credits the slot
/// back, and at the end answers with its verdict on the whole transfer.
struct ServerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "server", abstract: "Receive and verify transfers.")

    @Option(help: "The address to listen on, e.g. fe80::ff:fe00:a01%veth0 (an RDMA device's netdev).")
    var address: String

    @Option(help: "The rdma_cm port.")
    var port: UInt16 = 7470

    @Option(help: "Landing slots per client (1...32): how many messages may be in flight.")
    var slots: Int = 8

    @Option(help: "Transfers to serve before exiting; 0 serves until stopped.")
    var connections: Int = 0

    @Option(help: "Seconds to wait for a client before giving up.")
    var acceptTimeout: Int = 120

    @Option(help: "Seconds without a message before a client counts as gone.")
    var idleTimeout: Int = 20

    /// Test hook: exit abruptly (no disconnect, like a crash) after this many messages.
    @Option(help: .hidden)
    var abortAfter: Int?

    func validate() throws {
        guard (1...32).contains(slots) else { throw ValidationError("--slots must be 1...32, got \(slots)") }
        guard connections >= 0 else { throw ValidationError("--connections must not be negative") }
        guard acceptTimeout > 0, idleTimeout > 0 else { throw ValidationError("timeouts must be positive") }
    }

    func run() throws {
        var listener: ConnectionListener?
        do {
            listener = try ConnectionListener(address: address, port: port)
        } catch {
            throw TransferError("cannot listen on \(address) port \(port): \(error)")
        }
        say("server", "listening on \(address) port \(listener?.port ?? port), \(slots) slots per client")
        var served = 0
        var failed = 0
        while listener != nil {
            served += 1
            do {
                // After the last client the port closes at once: a client that comes later is
                // refused, instead of waiting on a request nobody will answer.
                let client = try acceptClient(&listener, closingAfter: connections > 0 && served >= connections)
                let verdict = try serve(client)
                if verdict.mismatchedMessages > 0 { failed += 1 }
            } catch {
                say("server", "transfer \(served) failed: \(error)")
                failed += 1
            }
        }
        guard failed == 0 else { throw ExitCode(1) }
    }

    /// A client accepted: its request, the landing slots registered for it, its control channel.
    private struct AcceptedClient {
        var connection: Connection
        var request: TransferRequest
        var landing: AnonymousMapping
        var landingRegion: MemoryRegion
        var channel: ControlChannel
    }

    /// Accepts one client, registering its landing slots and posting its receives before the
    /// accept; drops the listener after it when `closingAfter`.
    private func acceptClient(_ listener: inout ConnectionListener?, closingAfter: Bool) throws -> AcceptedClient {
        defer { if closingAfter { listener = nil } }
        guard let listening = listener else { throw TransferError("the listener is closed") }
        var accepted: (TransferRequest, AnonymousMapping, MemoryRegion, ControlChannel)?
        let connection = try listening.accept(options: Self.connectionOptions, timeout: .seconds(acceptTimeout)) { connection in
            let request = try TransferRequest(decoding: connection.peerPrivateData)
            try Self.check(request)
            let landing = try AnonymousMapping(length: slots * Int(request.messageSize))
            let region = try connection.protectionDomain.registerMemory(landing.bytes, access: [.localWrite, .remoteWrite])
            // One receive per slot (each write with immediate consumes one), one for the done.
            let channel = try ControlChannel(connection: connection, receives: slots + 1, sends: slots + 1, peer: "the client")
            accepted = (request, landing, region, channel)
            return TransferHello(slotAddress: UInt64(landing.address), rkey: region.rkey,
                                 slots: UInt32(slots), slotSize: request.messageSize).encoded
        }
        guard let (request, landing, region, channel) = accepted else {
            throw TransferError("accepted a connection without its buffers")
        }
        return AcceptedClient(connection: connection, request: request, landing: landing, landingRegion: region, channel: channel)
    }

    private func serve(_ client: AcceptedClient) throws -> TransferVerdict {
        defer { client.connection.disconnect() }
        let request = client.request
        say("server", "client connected: \(ByteCount.format(Int(request.totalBytes))) in \(request.messageCount) "
            + "messages of \(ByteCount.format(Int(request.messageSize))) (\(request.registration) registration)")
        let result = try receive(request, into: client.landing, over: client.channel)
        let status = result.mismatchedMessages == 0 ? "every byte verified" : "\(result.mismatchedMessages) MESSAGES CORRUPT"
        say("server", "transfer done: \(result.verifiedMessages) messages, \(ByteCount.format(Int(result.verifiedBytes))) "
            + "verified: \(status)")
        return result
    }

    /// What the server accepts from a client: sizes it can allocate, counts that add up.
    private static func check(_ request: TransferRequest) throws {
        guard request.messageSize > 0, request.messageSize <= 64 << 20 else {
            throw TransferError("message size \(request.messageSize) is outside 1 byte...64 MiB")
        }
        let size = UInt64(request.messageSize)
        guard request.totalBytes > 0, (request.totalBytes + size - 1) / size == request.messageCount else {
            throw TransferError("\(request.messageCount) messages of \(size) bytes cannot carry \(request.totalBytes) bytes")
        }
    }

    static var connectionOptions: Connection.Options {
        var options = Connection.Options()
        options.capabilities.maxSendRequests = 64
        options.capabilities.maxReceiveRequests = 64
        return options
    }

    private func receive(_ request: TransferRequest, into landing: AnonymousMapping,
                         over channel: ControlChannel) throws -> TransferVerdict {
        let idle = Duration.seconds(idleTimeout)
        var verdict = TransferVerdict(verifiedMessages: 0, verifiedBytes: 0, mismatchedMessages: 0)
        var received: UInt64 = 0
        var answered = false
        func handle(_ completion: WorkCompletion) throws {
            switch WorkID(raw: completion.id) {
            case .send(let buffer):
                channel.sendCompleted(buffer)
            case .receive(let buffer) where completion.immediateData != nil:
                let index = received
                received += 1
                let slot = Int(index % UInt64(slots))
                let expected = index + 1 == UInt64(request.messageCount)
                    ? Int(request.totalBytes - index * UInt64(request.messageSize)) : Int(request.messageSize)
                let start = slot * Int(request.messageSize)
                let bytes = UnsafeRawBufferPointer(rebasing: landing.bytes[start..<start + min(expected, Int(completion.byteLength))])
                let matched = Int(completion.byteLength) == expected && Checksum.crc32(bytes) == completion.immediateData
                if matched {
                    verdict.verifiedMessages += 1
                    verdict.verifiedBytes += UInt64(expected)
                } else {
                    verdict.mismatchedMessages += 1
                    say("server", "message \(index): CRC-32 or length mismatch (\(completion.byteLength) of \(expected) bytes)")
                }
                try channel.postReceive(buffer)
                try channel.send(Credit(index: index, checksumMatched: matched).encoded, idleTimeout: idle, handle: handle)
                if let abortAfter, received >= UInt64(abortAfter) {
                    say("server", "aborting after \(received) messages (--abort-after)")
                    fflush(nil)  // every stream: what was printed reaches the terminal
                    _exit(9)
                }
            case .receive(let buffer):
                let done = try TransferDone(decoding: channel.received(buffer, length: completion.byteLength))
                if done.messages != received {
                    say("server", "the client sent \(done.messages) messages, \(received) arrived")
                    verdict.mismatchedMessages += done.messages > received ? done.messages - received : 0
                }
                try channel.send(verdict.encoded, idleTimeout: idle, handle: handle)
                answered = true
            case .write, nil:
                throw TransferError("unexpected completion \(completion.id)")
            }
        }
        while !(answered && channel.sendsIdle) {
            for completion in try channel.nextCompletions(idleTimeout: idle, waitingFor: answered ? "the verdict's send" : "a message") {
                try handle(completion)
            }
        }
        return verdict
    }
}
