import Testing
@testable import Transfer

/// The example's own logic, without a device: what goes on the wire and how sizes are read.
@Suite struct TransferWireTests {
    @Test func everyMessageRoundTrips() throws {
        let request = TransferRequest(messageSize: 262_144, messageCount: 256, totalBytes: 64 << 20, registration: "cache")
        #expect(try TransferRequest(decoding: request.encoded) == request)
        #expect(request.encoded.count <= 56, "rdma_cm carries at most 56 bytes with a connect")
        let hello = TransferHello(slotAddress: 0x7f00_1234_5000, rkey: 0xabcd, slots: 8, slotSize: 262_144)
        #expect(try TransferHello(decoding: hello.encoded) == hello)
        let credit = Credit(index: 41, checksumMatched: false)
        #expect(try Credit(decoding: credit.encoded) == credit)
        let done = TransferDone(messages: 256, bytes: 64 << 20)
        #expect(try TransferDone(decoding: done.encoded) == done)
        let verdict = TransferVerdict(verifiedMessages: 255, verifiedBytes: 1 << 20, mismatchedMessages: 1)
        #expect(try TransferVerdict(decoding: verdict.encoded) == verdict)
        #expect(WireReader.kind(of: verdict.encoded) == .verdict)
    }

    /// RoCE pads private data with zeros to the transport's size: a reader must not mind.
    @Test func paddedPrivateDataStillDecodes() throws {
        let hello = TransferHello(slotAddress: 4096, rkey: 7, slots: 2, slotSize: 64)
        let padded = hello.encoded + [UInt8](repeating: 0, count: 196 - hello.encoded.count)
        #expect(try TransferHello(decoding: padded) == hello)
    }

    @Test func strangersAndOtherKindsAreRefusedInWords() {
        #expect(throws: WireFormat.Malformed.self) { try TransferHello(decoding: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]) }
        #expect(throws: WireFormat.Malformed.self) { try TransferHello(decoding: Credit(index: 1, checksumMatched: true).encoded) }
        #expect(throws: WireFormat.Malformed.self) { try TransferHello(decoding: Array(TransferHello(slotAddress: 1, rkey: 1, slots: 1, slotSize: 1).encoded.prefix(12))) }
        do {
            _ = try TransferRequest(decoding: [UInt8](repeating: 0, count: 40))
            Issue.record("zeros decoded as a request")
        } catch {
            #expect("\(error)".contains("not an rdma-transfer peer"))
        }
    }

    @Test func workIDsKeepWhatTheyWere() {
        for id in [WorkID.write(0), .write(1 << 40), .receive(3), .send(31)] {
            #expect(WorkID(raw: id.raw) == id)
        }
        #expect(WorkID(raw: 0) == nil)
    }

    @Test func sizesReadAsDdReadsThem() {
        #expect(ByteCount(argument: "65536")?.bytes == 65536)
        #expect(ByteCount(argument: "256K")?.bytes == 256 << 10)
        #expect(ByteCount(argument: "64MiB")?.bytes == 64 << 20)
        #expect(ByteCount(argument: "1G")?.bytes == 1 << 30)
        #expect(ByteCount(argument: "0")?.bytes == 0)
        #expect(ByteCount(argument: "-1") == nil)
        #expect(ByteCount(argument: "12XB") == nil)
        #expect(ByteCount(argument: "99999999999999999G") == nil, "overflow is an error, not a trap")
        #expect(ByteCount.format(64 << 20) == "64 MiB")
        #expect(ByteCount.format(1536) == "1.5 KiB")
        #expect(ByteCount.format(1000) == "1000 B")
    }

    @Test func theCRCIsZlibs() {
        let bytes = Array("123456789".utf8)
        #expect(bytes.withUnsafeBytes { Checksum.crc32($0) } == 0xCBF4_3926)  // the CRC-32 check value
    }
}
