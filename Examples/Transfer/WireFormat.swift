/// What client and server say to each other, as fixed little-endian layouts.
///
/// The first two messages ride on rdma_cm's connect and accept (private data), so each side
/// knows the other's buffers before its first work request; the rest are SENDs of at most
/// `WireFormat.controlSize` bytes. Every message starts with a magic and a kind, and a reader
/// checks both: a stray peer or a version skew is an error that says so, not a garbage figure.
enum WireFormat {
    static let magic: UInt32 = 0x5244_4d54  // "RDMT"
    static let version: UInt16 = 1
    /// The size of every control buffer (credits, done, verdict).
    static let controlSize = 64

    enum Kind: UInt16 {
        case request = 1, hello, credit, done, verdict
    }

    struct Malformed: Error, CustomStringConvertible {
        var description: String
    }
}

/// The client's connect request: how much it will send, in messages of what size.
struct TransferRequest: Equatable {
    var messageSize: UInt32
    var messageCount: UInt32
    var totalBytes: UInt64
    /// How the client registers its buffers (the server only reports it).
    var registration: String

    static let maxNameLength = 16
}

/// The server's accept: where the client writes message `i` (slot `i % slots`) and with which key.
struct TransferHello: Equatable {
    var slotAddress: UInt64
    var rkey: UInt32
    var slots: UInt32
    var slotSize: UInt32
}

/// The server's answer to one message: it verified message `index` (or did not), and its slot
/// may be written again.
struct Credit: Equatable {
    var index: UInt64
    var checksumMatched: Bool
}

/// The client's last message: what it sent in all.
struct TransferDone: Equatable {
    var messages: UInt64
    var bytes: UInt64
}

/// The server's verdict on the whole transfer.
struct TransferVerdict: Equatable {
    var verifiedMessages: UInt64
    var verifiedBytes: UInt64
    var mismatchedMessages: UInt64
}

/// Little-endian writing and checked reading of the layouts above.
struct WireWriter {
    private(set) var bytes: [UInt8] = []

    init(_ kind: WireFormat.Kind) {
        put(WireFormat.magic)
        put(WireFormat.version)
        put(kind.rawValue)
    }

    mutating func put<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    mutating func put(name: String, width: Int) {
        var encoded = Array(name.utf8.prefix(width))
        encoded += [UInt8](repeating: 0, count: width - encoded.count)
        bytes += encoded
    }
}

struct WireReader {
    private let bytes: [UInt8]
    private var offset = 0

    /// Checks the header: magic, version and the expected kind.
    init(_ bytes: [UInt8], expecting kind: WireFormat.Kind, from sender: String) throws {
        self.bytes = bytes
        let magic: UInt32 = try get(sender)
        guard magic == WireFormat.magic else {
            throw WireFormat.Malformed(description: "\(sender) is not an rdma-transfer peer (magic 0x\(String(magic, radix: 16)))")
        }
        let version: UInt16 = try get(sender)
        guard version == WireFormat.version else {
            throw WireFormat.Malformed(description: "\(sender) speaks version \(version), this program \(WireFormat.version)")
        }
        let raw: UInt16 = try get(sender)
        guard raw == kind.rawValue else {
            throw WireFormat.Malformed(description: "\(sender): expected \(kind), got message kind \(raw)")
        }
    }

    /// The kind of a control message, without consuming it.
    static func kind(of bytes: [UInt8]) -> WireFormat.Kind? {
        guard bytes.count >= 8 else { return nil }
        return WireFormat.Kind(rawValue: UInt16(bytes[6]) | UInt16(bytes[7]) << 8)
    }

    mutating func get<T: FixedWidthInteger>(_ sender: String) throws -> T {
        let size = MemoryLayout<T>.size
        guard offset + size <= bytes.count else {
            throw WireFormat.Malformed(description: "\(sender) sent a message cut short (\(bytes.count) bytes)")
        }
        var value = T.zero
        withUnsafeMutableBytes(of: &value) { $0.copyBytes(from: bytes[offset..<offset + size]) }
        offset += size
        return T(littleEndian: value)
    }

    mutating func getName(width: Int, _ sender: String) throws -> String {
        guard offset + width <= bytes.count else {
            throw WireFormat.Malformed(description: "\(sender) sent a message cut short (\(bytes.count) bytes)")
        }
        let field = bytes[offset..<offset + width].prefix { $0 != 0 }
        offset += width
        return String(decoding: field, as: UTF8.self)
    }
}

extension TransferRequest {
    var encoded: [UInt8] {
        var writer = WireWriter(.request)
        writer.put(messageSize)
        writer.put(messageCount)
        writer.put(totalBytes)
        writer.put(name: registration, width: Self.maxNameLength)
        return writer.bytes
    }

    init(decoding bytes: [UInt8]) throws {
        var reader = try WireReader(bytes, expecting: .request, from: "the client")
        messageSize = try reader.get("the client")
        messageCount = try reader.get("the client")
        totalBytes = try reader.get("the client")
        registration = try reader.getName(width: Self.maxNameLength, "the client")
    }
}

extension TransferHello {
    var encoded: [UInt8] {
        var writer = WireWriter(.hello)
        writer.put(slotAddress)
        writer.put(rkey)
        writer.put(slots)
        writer.put(slotSize)
        return writer.bytes
    }

    init(decoding bytes: [UInt8]) throws {
        var reader = try WireReader(bytes, expecting: .hello, from: "the server")
        slotAddress = try reader.get("the server")
        rkey = try reader.get("the server")
        slots = try reader.get("the server")
        slotSize = try reader.get("the server")
    }
}

extension Credit {
    var encoded: [UInt8] {
        var writer = WireWriter(.credit)
        writer.put(index)
        writer.put(UInt8(checksumMatched ? 1 : 0))
        return writer.bytes
    }

    init(decoding bytes: [UInt8]) throws {
        var reader = try WireReader(bytes, expecting: .credit, from: "the server")
        index = try reader.get("the server")
        checksumMatched = try reader.get("the server") as UInt8 == 1
    }
}

extension TransferDone {
    var encoded: [UInt8] {
        var writer = WireWriter(.done)
        writer.put(messages)
        writer.put(bytes)
        return writer.bytes
    }

    init(decoding bytes: [UInt8]) throws {
        var reader = try WireReader(bytes, expecting: .done, from: "the client")
        messages = try reader.get("the client")
        self.bytes = try reader.get("the client")
    }
}

extension TransferVerdict {
    var encoded: [UInt8] {
        var writer = WireWriter(.verdict)
        writer.put(verifiedMessages)
        writer.put(verifiedBytes)
        writer.put(mismatchedMessages)
        return writer.bytes
    }

    init(decoding bytes: [UInt8]) throws {
        var reader = try WireReader(bytes, expecting: .verdict, from: "the server")
        verifiedMessages = try reader.get("the server")
        verifiedBytes = try reader.get("the server")
        mismatchedMessages = try reader.get("the server")
    }
}
