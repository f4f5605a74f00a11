#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Verbs

/// The sending side: connects, and streams the data set in messages whose buffers come and go
/// (see `BufferChoice`), each registered as `RegistrationChoice` says, written with its CRC-32
/// as the immediate value into the server's next free slot. Prints the figures of each run and,
/// with `--registration both`, the cache's against a registration per message.
struct ClientCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "client", abstract: "Send a data set to a server and report the figures.")

    @Option(help: "The server's address, e.g. fe80::ff:fe00:a01%veth1.")
    var server: String

    @Option(help: "The server's rdma_cm port.")
    var port: UInt16 = 7470

    @Option(help: "Send this many random bytes (e.g. 64MiB).")
    var size: ByteCount?

    @Option(help: "Send this file instead.")
    var file: String?

    @Option(help: "Bytes per message (1 byte...64 MiB).")
    var messageSize = ByteCount(bytes: 256 << 10)

    @Option(help: "cache, plain (one ibv_reg_mr per message) or both, one after the other.")
    var registration: RegistrationRuns = .both

    @Option(help: "With --registration both: rounds of the two runs (alternating which goes first); the comparison takes medians.")
    var rounds = 1

    @Option(help: "malloc (one per message) or pool (mapped anew every --remap-every messages).")
    var buffers: BufferChoice = .malloc

    @Option(help: "With --buffers pool: map the pool anew after this many messages.")
    var remapEvery = 16

    @Option(help: "Seconds to keep trying to reach the server.")
    var connectTimeout = 10

    @Option(help: "Seconds without progress before the server counts as gone.")
    var idleTimeout = 20

    func validate() throws {
        switch (size, file) {
        case (nil, nil): throw ValidationError("give the data set: --size BYTES or --file PATH")
        case (.some, .some): throw ValidationError("give --size or --file, not both")
        case (.some(let size), nil) where size.bytes == 0: throw ValidationError("--size must be at least 1 byte, got 0")
        default: break
        }
        guard (1...(64 << 20)).contains(messageSize.bytes) else {
            throw ValidationError("--message-size must be 1 byte...64 MiB, got \(messageSize)")
        }
        guard rounds >= 1 else { throw ValidationError("--rounds must be at least 1") }
        guard remapEvery >= 0 else { throw ValidationError("--remap-every must not be negative") }
        guard connectTimeout > 0, idleTimeout > 0 else { throw ValidationError("timeouts must be positive") }
    }

    func run() throws {
        let dataSet = try size.map { try DataSet(generating: $0.bytes) } ?? DataSet(file: file ?? "")
        say("client", "sending \(dataSet.name) to \(server) port \(port) in messages of \(messageSize)")
        var figures: [TransferFigures] = []
        for round in 0..<(registration == .both ? rounds : 1) {
            // Alternate which way goes first: the first run of a process also pays its start-up.
            for choice in round % 2 == 0 ? registration.choices : registration.choices.reversed() {
                let run = try transfer(dataSet, registering: choice)
                say("client", run.summary)
                figures.append(run)
            }
        }
        if registration == .both { say("client", TransferFigures.comparison(figures)) }
        guard figures.allSatisfy(\.verified) else { throw ExitCode(1) }
    }

    /// One connection, one pass over the data set.
    private func transfer(_ dataSet: DataSet, registering choice: RegistrationChoice) throws -> TransferFigures {
        let total = dataSet.bytes.count
        let messageBytes = messageSize.bytes
        let count = (total + messageBytes - 1) / messageBytes
        guard let messageCount = UInt32(exactly: count) else {
            throw TransferError("\(count) messages: more than one transfer can count; use a larger --message-size")
        }
        let request = TransferRequest(messageSize: UInt32(messageBytes), messageCount: messageCount,
                                      totalBytes: UInt64(total), registration: choice.rawValue)
        let connection = try connect(request)
        defer { connection.disconnect() }
        let hello = try TransferHello(decoding: connection.peerPrivateData)
        guard hello.slots > 0, hello.slots <= 32, hello.slotSize >= UInt32(messageBytes) else {
            throw TransferError("the server offered \(hello.slots) slots of \(hello.slotSize) bytes for \(messageBytes)-byte messages")
        }
        let window = Int(hello.slots)
        let channel = try ControlChannel(connection: connection, receives: window + 1, sends: 1, peer: "the server")
        let registrar = MessageRegistrar(choice, domain: connection.protectionDomain)
        defer { registrar.shutdown() }
        let buffers = try MessageBuffers(self.buffers, messageSize: messageBytes, window: window, remapEvery: remapEvery)
        let keys = InFlightKeys(count: window)
        var inFlight = [UnsafeMutableRawBufferPointer?](repeating: nil, count: window)
        let idle = Duration.seconds(idleTimeout)
        let label = "client: [\(choice.rawValue)]"
        var progress = ProgressLine(label: label, total: total)

        var sent = 0, written = 0, credited = 0, corrupt = 0
        var verdict: TransferVerdict?
        let clock = ContinuousClock()
        let start = clock.now
        func handle(_ completion: WorkCompletion) throws {
            switch WorkID(raw: completion.id) {
            case .write(let index):
                let slot = Int(index % UInt64(window))
                if let buffer = inFlight[slot] { buffers.release(buffer) }
                inFlight[slot] = nil
                if let held = keys.take(slot) { try registrar.release(held) }
                written += 1
            case .receive(let buffer):
                let bytes = channel.received(buffer, length: completion.byteLength)
                if WireReader.kind(of: bytes) == .verdict {
                    verdict = try TransferVerdict(decoding: bytes)
                    return
                }
                let credit = try Credit(decoding: bytes)
                guard credit.index == UInt64(credited) else {
                    throw TransferError("the server credited message \(credit.index), expected \(credited)")
                }
                if !credit.checksumMatched { corrupt += 1 }
                credited += 1
                try channel.postReceive(buffer)
            case .send(let buffer):
                channel.sendCompleted(buffer)
            case nil:
                throw TransferError("unexpected completion \(completion.id)")
            }
        }

        while credited < count {
            // Send while the server has a free slot and this side a free window entry.
            while sent < count, sent - credited < window, inFlight[sent % window] == nil, keys.isFree(sent % window) {
                if buffers.remapDue {
                    guard written == sent else { break }  // the pool may be remapped only when idle
                    try buffers.remap()
                }
                let slot = sent % window
                let offset = sent * messageBytes
                let length = min(messageBytes, total - offset)
                let buffer = try buffers.acquire(length: length, slot: slot)
                buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: dataSet.bytes[offset..<offset + length]))
                let crc = Checksum.crc32(UnsafeRawBufferPointer(buffer))
                let held = try registrar.keys(for: buffer)
                let element = ScatterGatherElement(address: UInt64(UInt(bitPattern: buffer.baseAddress)),
                                                   length: UInt32(length), lkey: held.lkey)
                keys.store(held, at: slot)
                inFlight[slot] = buffer
                try connection.queuePair.postWrite([element], remoteAddress: hello.slotAddress + UInt64(slot) * UInt64(hello.slotSize),
                                                   rkey: hello.rkey, immediate: crc, id: WorkID.write(UInt64(sent)).raw)
                sent += 1
            }
            for completion in try channel.nextCompletions(idleTimeout: idle, waitingFor: "message \(credited)'s credit") {
                try handle(completion)
            }
            progress.update(done: credited * messageBytes)
        }
        while written < sent {
            for completion in try channel.nextCompletions(idleTimeout: idle, waitingFor: "the last writes") { try handle(completion) }
        }
        let elapsed = clock.now - start
        try channel.send(TransferDone(messages: UInt64(sent), bytes: UInt64(total)).encoded, idleTimeout: idle, handle: handle)
        while verdict == nil {
            for completion in try channel.nextCompletions(idleTimeout: idle, waitingFor: "the server's verdict") { try handle(completion) }
        }
        guard let verdict else { throw TransferError("no verdict") }
        let counts = registrar.counts
        return TransferFigures(registration: choice, buffers: self.buffers, bytes: total, messages: count,
                               messageSize: messageBytes, elapsed: elapsed, registrationTime: registrar.registrationTime,
                               deviceRegistrationTime: registrar.deviceRegistrationTime,
                               deviceRegistrations: registrar.deviceRegistrations,
                               registrations: counts.registrations, hits: counts.hits, invalidations: counts.invalidations,
                               remaps: buffers.remaps, corruptCredits: corrupt, verdict: verdict)
    }

    /// Connects, trying again while nobody listens yet (a server still starting), for at most
    /// `connectTimeout` seconds.
    private func connect(_ request: TransferRequest) throws -> Connection {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: .seconds(connectTimeout))
        var attempts = 0
        while true {
            attempts += 1
            do {
                let remaining = max(deadline - clock.now, .milliseconds(100))
                return try Connection.connect(to: server, port: port, options: ServerCommand.connectionOptions,
                                              privateData: request.encoded, timeout: remaining)
            } catch {
                guard clock.now < deadline else {
                    throw TransferError("cannot connect to \(server) port \(port) within \(connectTimeout) s "
                                        + "(\(attempts) attempts): \(error)")
                }
                usleep(200_000)  // a server that is still starting: try again shortly
            }
        }
    }
}
