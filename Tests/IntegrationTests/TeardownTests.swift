import MemoryMapping
import Testing
import Verbs

extension RxeIntegration {
    /// Children keep their parents: dropping the application's references in the "wrong"
    /// order still tears down MR before PD and QP before CQ, and leaves the device as it was.
    @Suite struct Teardown {
        @Test func childrenKeepParentsAndEverythingIsReleased() throws {
            let before = try DeviceResources.current(device: Rxe.deviceName)
            let mapping = try AnonymousMapping(length: 8192)
            var (region, queuePair) = try Self.buildAndDropParents(mapping)

            // The context, PD and CQ variables are gone; the MR and QP still work through them.
            let during = try DeviceResources.current(device: Rxe.deviceName)
            #expect(during.memoryRegions == before.memoryRegions + 1, "\(during)")
            #expect(during.queuePairs == before.queuePairs + 1, "\(during)")
            let liveRegion = try #require(region)
            let liveQueuePair = try #require(queuePair)
            try liveQueuePair.postWrite([ScatterGatherElement(region: liveRegion, offset: 0, length: 4096)],
                                        remoteAddress: UInt64(liveRegion.address + 4096), rkey: liveRegion.rkey, id: 1)
            try liveQueuePair.sendCompletionQueue.waitForSuccess(of: 1)

            region = nil
            queuePair = nil
            _ = consume liveRegion
            _ = consume liveQueuePair
            #expect(try DeviceResources.current(device: Rxe.deviceName) == before)
        }

        private static func buildAndDropParents(_ mapping: AnonymousMapping) throws -> (MemoryRegion?, QueuePair?) {
            let context = try DeviceContext(name: Rxe.deviceName)
            let domain = try ProtectionDomain(context: context)
            let queue = try CompletionQueue(context: context)
            let queuePair = try QueuePair(protectionDomain: domain, sendCompletionQueue: queue)
            try queuePair.connectToItself()
            return (try domain.registerMemory(mapping.bytes, access: .rdma), queuePair)
        }
    }
}
