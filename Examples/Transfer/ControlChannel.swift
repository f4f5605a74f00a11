#if canImport(Glibc)
import Glibc
#endif
import MemoryMapping
import Verbs

/// One side's control traffic over a connection: receives posted from a ring of small
/// registered buffers (credits, the last message, the verdict) and SENDs from another, plus
/// the completion polling both sides share.
///
/// Every receive is posted before the peer can send into it (the server's before its accept,
/// the client's before its first write), so no SEND meets an empty queue and waits out a
/// receiver-not-ready timer.
final class ControlChannel {
    let connection: Connection
    private let buffers: AnonymousMapping
    private let region: MemoryRegion
    private let receiveCount: Int
    private let sendCount: Int
    /// Send buffers not in flight.
    private var freeSends: [Int]
    /// Who is at the other end, for messages ("the server", "the client").
    let peer: String

    init(connection: Connection, receives: Int, sends: Int, peer: String) throws {
        self.connection = connection
        receiveCount = receives
        sendCount = sends
        self.peer = peer
        buffers = try AnonymousMapping(length: (receives + sends) * WireFormat.controlSize)
        region = try connection.protectionDomain.registerMemory(buffers.bytes, access: [.localWrite])
        freeSends = Array(receives..<receives + sends)
        for buffer in 0..<receives { try postReceive(buffer) }
    }

    func postReceive(_ buffer: Int) throws {
        let element = try ScatterGatherElement(region: region, offset: buffer * WireFormat.controlSize,
                                               length: WireFormat.controlSize)
        try connection.queuePair.postReceive([element], id: WorkID.receive(buffer).raw)
    }

    /// The bytes a receive into `buffer` delivered.
    func received(_ buffer: Int, length: UInt32) -> [UInt8] {
        let start = buffer * WireFormat.controlSize
        return Array(buffers.bytes[start..<start + min(Int(length), WireFormat.controlSize)])
    }

    /// SENDs `message` from a free control buffer; waits (bounded) for one if all are in flight.
    func send(_ message: [UInt8], idleTimeout: Duration, handle: (WorkCompletion) throws -> Void) throws {
        while freeSends.isEmpty {
            for completion in try nextCompletions(idleTimeout: idleTimeout, waitingFor: "a send buffer") {
                try handle(completion)
            }
        }
        let buffer = freeSends.removeLast()
        let start = buffer * WireFormat.controlSize
        buffers.bytes[start..<start + message.count].copyBytes(from: message)
        let element = try ScatterGatherElement(region: region, offset: start, length: message.count)
        try connection.queuePair.postSend([element], id: WorkID.send(buffer).raw)
    }

    /// Gives a send buffer back once its SEND completed.
    func sendCompleted(_ buffer: Int) { freeSends.append(buffer) }

    /// Whether no SEND is in flight.
    var sendsIdle: Bool { freeSends.count == sendCount }

    /// The next completions, failing ones turned into errors. Waits at most `idleTimeout` for
    /// the first, and notices a peer that disconnected in the meantime.
    func nextCompletions(idleTimeout: Duration, waitingFor what: String) throws -> [WorkCompletion] {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: idleTimeout)
        var idleRounds = 0
        while true {
            let completions = try connection.completionQueue.poll(maxEntries: 32)
            if !completions.isEmpty { return try checked(completions) }
            if try connection.peerHasDisconnected() {
                // What the peer sent before it disconnected may have landed since the poll.
                let last = try connection.completionQueue.poll(maxEntries: 32)
                guard last.isEmpty else { return try checked(last) }
                throw TransferError("\(peer) disconnected while this side waited for \(what)")
            }
            guard clock.now < deadline else {
                throw TransferError("nothing from \(peer) for \(idleTimeout) while waiting for \(what): is it still there?")
            }
            // Spin briefly (completions take microseconds), then yield the CPU: the emulated
            // device and the peer may share it.
            idleRounds += 1
            if idleRounds > 200 { usleep(50) }
        }
    }

    /// The completions, or the error of the first that failed.
    private func checked(_ completions: [WorkCompletion]) throws -> [WorkCompletion] {
        if let failed = completions.first(where: { $0.status != .success }) {
            let gone = (try? connection.peerHasDisconnected()) == true ? "\(peer) disconnected: " : ""
            throw TransferError(gone + failure(failed))
        }
        return completions
    }

    private func failure(_ completion: WorkCompletion) -> String {
        let what: String
        switch WorkID(raw: completion.id) {
        case .write(let index): what = "the RDMA WRITE of message \(index)"
        case .receive: what = "a receive"
        case .send: what = "a control SEND"
        case nil: what = "work request \(completion.id)"
        }
        let hint = switch completion.status {
        case .retryExceededError, .rnrRetryExceededError: " (\(peer) stopped answering: gone, or unreachable)"
        case .workRequestFlushError: " (the connection was already broken)"
        case .remoteAccessError: " (\(peer) refused the key or the address: its memory is gone, or it never offered it)"
        default: ""
        }
        return "\(what) failed with \(completion.status)\(hint)"
    }
}
