#if canImport(Glibc)
import Glibc
#endif
import MemoryMapping
import SystemPackage
import Testing
import Verbs

extension RxeIntegration {
    /// Each mistake is a `VerbsError` naming the call, the argument and the errno; nothing
    /// registered before it is lost, and the device holds no extra MR after it.
    @Suite struct BadInput {
        let context: DeviceContext
        let domain: ProtectionDomain

        init() throws {
            context = try DeviceContext(name: Rxe.deviceName)
            domain = try ProtectionDomain(context: context)
        }

        /// Registers through `attempt`, expects it to fail as described, and checks the device
        /// holds the same MRs afterwards and an MR made before still works.
        func expectRefused(_ errno: Errno, argument: String, detail: String? = nil,
                           _ attempt: () throws -> MemoryRegion) throws {
            let keeper = try AnonymousMapping(length: 4096)
            let kept = try domain.registerMemory(keeper.bytes, access: .rdma)
            let before = try DeviceResources.current(device: Rxe.deviceName)
            let error = try #require(throws: VerbsError.self) { try attempt() }
            #expect(error.call == "ibv_reg_mr")
            #expect(error.errno == errno, "\(error)")
            #expect(error.argument?.contains(argument) == true, "\(error)")
            if let detail { #expect(error.detail?.contains(detail) == true, "\(error)") }
            #expect(try DeviceResources.current(device: Rxe.deviceName) == before)
            #expect(kept.isRegistered)
        }

        @Test func zeroLength() throws {
            let mapping = try AnonymousMapping(length: 4096)
            try expectRefused(.invalidArgument, argument: "length: 0") {
                try domain.registerMemory(address: mapping.address, length: 0, access: .rdma)
            }
        }

        @Test func nullAddress() throws {
            try expectRefused(.badAddress, argument: "address: NULL") {
                try domain.registerMemory(address: 0, length: 4096, access: .rdma)
            }
        }

        @Test func unmappedRange() throws {
            let mapping = try AnonymousMapping(length: 65536)
            let address = mapping.address
            try mapping.unmap()
            try expectRefused(.badAddress, argument: "address: 0x", detail: "nothing is mapped") {
                try domain.registerMemory(address: address, length: 65536, access: .rdma)
            }
        }

        @Test func holeInTheMiddle() throws {
            let page = AnonymousMapping.pageSize
            let mapping = try AnonymousMapping(length: 3 * page)
            try expectRefused(.badAddress, argument: "address: 0x", detail: "unmapped page") {
                // Unmapped right before registering: any mmap in between (the leak check runs a
                // process) could otherwise be placed in the hole.
                #expect(munmap(UnsafeMutableRawPointer(bitPattern: mapping.address + UInt(page)), page) == 0)
                return try domain.registerMemory(address: mapping.address, length: 3 * page, access: .rdma)
            }
        }

        @Test("read-only memory asked for local or remote write", arguments: [AccessFlags.localWrite, [.localWrite, .remoteWrite]])
        func readOnlyForWrite(access: AccessFlags) throws {
            let mapping = try AnonymousMapping(length: 8192)
            try mapping.protect(PROT_READ)
            try expectRefused(.badAddress, argument: "access:", detail: "read-only") {
                try domain.registerMemory(address: mapping.address, length: 8192, access: access)
            }
            // Read access to the same memory is fine.
            let readable = try domain.registerMemory(address: mapping.address, length: 8192, access: .remoteRead)
            try readable.deregister()
        }

        @Test("scatter-gather offsets and lengths out of the region, however large: a typed error, never a trap",
              arguments: [(0, 4097), (4096, 1), (-1, 16), (Int.min, 16), (Int.max, 16), (16, Int.max), (16, -1), (Int.max, Int.max)])
        func scatterGatherOutOfRange(offset: Int, length: Int) throws {
            let mapping = try AnonymousMapping(length: 4096)
            let region = try domain.registerMemory(mapping.bytes, access: .rdma)
            let error = try #require(throws: VerbsError.self) {
                try ScatterGatherElement(region: region, offset: offset, length: length)
            }
            #expect(error.call == "ibv_sge" && error.errno == .invalidArgument, "\(error)")
            #expect(error.argument?.contains("offset: \(offset)") == true, "\(error)")
            // The edges that fit are fine.
            #expect(try ScatterGatherElement(region: region, offset: 4096, length: 0).length == 0)
            #expect(try ScatterGatherElement(region: region, offset: 0).length == 4096)
        }

        @Test("poll sizes and completion counts out of range: typed errors naming them")
        func pollSizes() throws {
            let queue = try CompletionQueue(context: context)
            for bad in [0, -1, Int.min, Int.max, CompletionQueue.maxPollEntries + 1] {
                let error = try #require(throws: VerbsError.self) { try queue.poll(maxEntries: bad) }
                #expect(error.call == "ibv_poll_cq" && error.argument == "num_entries: \(bad)", "\(error)")
            }
            #expect(try queue.poll(maxEntries: CompletionQueue.maxPollEntries).isEmpty)
            let error = try #require(throws: VerbsError.self) { try queue.waitForCompletions(-1) }
            #expect(error.errno == .invalidArgument)
            #expect(try queue.waitForCompletions(0).isEmpty)
            #expect(throws: VerbsError.self) { try CompletionQueue(context: context, capacity: -5) }
        }

        @Test func deviceThatDoesNotExist() throws {
            let error = try #require(throws: VerbsError.self) { try DeviceContext(name: "mlx9_nonexistent") }
            #expect(error.call == "ibv_open_device")
            #expect(error.argument == "name: \"mlx9_nonexistent\"")
            #expect(error.errno == .operationNotSupportedByDevice)
            #expect(error.detail?.contains(Rxe.deviceName) == true, "\(error)")
        }

        @Test func deregisterTwice() throws {
            let mapping = try AnonymousMapping(length: 4096)
            let region = try domain.registerMemory(mapping.bytes, access: .rdma)
            try region.deregister()
            let error = try #require(throws: VerbsError.self) { try region.deregister() }
            #expect(error.call == "ibv_dereg_mr")
            #expect(!region.isRegistered)
        }

        @Test("a QP connected to a QP number that does not exist fails its work request, it does not hang")
        func connectToMissingQueuePair() throws {
            let queue = try CompletionQueue(context: context)
            let queuePair = try QueuePair(protectionDomain: domain, sendCompletionQueue: queue)
            var options = QueuePair.ConnectOptions()
            options.timeout = 10  // 4 ms per try
            options.retryCount = 2
            var nowhere = try queuePair.endpoint()
            nowhere.queuePairNumber = 0xABCDE
            try queuePair.connect(to: nowhere, options: options)

            let mapping = try AnonymousMapping(length: 4096)
            let region = try domain.registerMemory(mapping.bytes, access: .rdma)
            try queuePair.postWrite([ScatterGatherElement(region: region)], remoteAddress: UInt64(region.address),
                                    rkey: region.rkey, id: 7)
            let completion = try queue.waitForCompletions(1, timeout: .seconds(30))[0]
            #expect(completion.id == 7)
            #expect(completion.status == .retryExceededError, "\(completion.status)")
            let error = try #require(throws: VerbsError.self) {
                try queuePair.postWrite([ScatterGatherElement(region: region)], remoteAddress: 0, rkey: 0, id: 8)
                try queue.waitForSuccess(of: 8, timeout: .seconds(30))
            }
            #expect(error.call.hasPrefix("ibv_p"), "\(error)")
        }
    }
}
