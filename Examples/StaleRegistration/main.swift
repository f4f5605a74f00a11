// The main example: real RDMA on a real device (soft-RoCE in CI), then the bug this package
// exists to prevent, shown on the same device.
//
//   scripts/rxe-vm run -- .build/debug/stale-registration
import Foundation
import MemoryMapping
import RDMAMemory

/// Runs the example; returns the process exit code.
func runExample() throws -> Int32 {
    let devices = try DeviceContext.devices()
    let wanted = ProcessInfo.processInfo.environment["RDMAMEMORY_RXE_DEVICE"] ?? devices.first?.name
    guard let name = wanted else {
        print("No RDMA device on this host. Run the example on soft-RoCE: scripts/run-example")
        return 2
    }
    let context = try DeviceContext(name: name)
    let port = try context.queryPort()
    print("Device \(name): port 1 \(port.state), GID \(try context.gid())")

    let domain = try ProtectionDomain(context: context)
    let queue = try CompletionQueue(context: context)
    let queuePair = try QueuePair(protectionDomain: domain, sendCompletionQueue: queue)
    try queuePair.connectToItself()
    print("Queue pair \(queuePair.number) connected to itself (RC).")

    try showWriteAndRead(domain: domain, queuePair: queuePair)
    let reproduced = try showStaleRegistration(domain: domain, queuePair: queuePair)
    let fixed = try showCacheFix(domain: domain, queuePair: queuePair)
    return reproduced && fixed ? 0 : 1
}

/// RDMA WRITE from one registered buffer into another, READ it back, verify both.
func showWriteAndRead(domain: ProtectionDomain, queuePair: QueuePair) throws {
    let length = 4096
    let source = try AnonymousMapping(length: length)
    let target = try AnonymousMapping(length: length)
    let readBack = try AnonymousMapping(length: length)
    source.fill { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }
    let sourceRegion = try domain.registerMemory(source.bytes, access: .rdma)
    let targetRegion = try domain.registerMemory(target.bytes, access: .rdma)
    let readRegion = try domain.registerMemory(readBack.bytes, access: .rdma)

    try queuePair.postWrite([ScatterGatherElement(region: sourceRegion)],
                            remoteAddress: UInt64(targetRegion.address), rkey: targetRegion.rkey, id: 1)
    try queuePair.sendCompletionQueue.waitForSuccess(of: 1)
    let written = target.equals(source)
    print("RDMA WRITE of \(length) bytes: \(written ? "data verified byte for byte" : "DATA MISMATCH")")

    try queuePair.postRead([ScatterGatherElement(region: readRegion)],
                           remoteAddress: UInt64(targetRegion.address), rkey: targetRegion.rkey, id: 2)
    try queuePair.sendCompletionQueue.waitForSuccess(of: 2)
    let read = readBack.equals(source)
    print("RDMA READ of \(length) bytes: \(read ? "data verified byte for byte" : "DATA MISMATCH")")
    guard written, read else { throw ExampleFailure.dataMismatch }
}

/// Register 64 KiB, unmap it, map new memory at the same address, RDMA WRITE through the old
/// registration: the device writes the old pages, the application's new memory never changes.
func showStaleRegistration(domain: ProtectionDomain, queuePair: QueuePair) throws -> Bool {
    let length = 64 * 1024
    print("\nThe stale-registration bug, without a registration cache:")
    let buffer = try AnonymousMapping(length: length)
    let oldRegion = try domain.registerMemory(buffer.bytes, access: .rdma)
    print("  1. Registered \(length / 1024) KiB at 0x\(String(oldRegion.address, radix: 16)) (rkey \(oldRegion.rkey)).")
    try buffer.replaceWithFreshMapping()
    print("  2. munmap() it and mmap(MAP_FIXED) new memory at the same address: same pointer, new pages.")

    let (completion, landed) = try writePattern(length, domain: domain, queuePair: queuePair,
                                                to: oldRegion.address, rkey: oldRegion.rkey, id: 3, into: buffer)
    print("  3. RDMA WRITE of \(length) bytes of 0xAB through the old rkey: completion \(completion.status).")
    print("     The application's memory at that address now holds \(landed) of \(length) written bytes.")

    let probe = try AnonymousMapping(length: length)
    let probeRegion = try domain.registerMemory(probe.bytes, access: .rdma)
    try queuePair.postRead([ScatterGatherElement(region: probeRegion)],
                           remoteAddress: UInt64(oldRegion.address), rkey: oldRegion.rkey, id: 4)
    try queuePair.sendCompletionQueue.waitForSuccess(of: 4)
    let inOldPages = probe.count { $0 == 0xAB }
    print("  4. RDMA READ through the old rkey returns \(inOldPages) bytes of 0xAB: the data went to the")
    print("     old pages, which the stale registration still pins. No error was reported anywhere.")

    let reproduced = completion.status == .success && landed == 0 && inOldPages == length
    print(reproduced
        ? "  Silent data loss reproduced. RDMAMemory's registration cache exists to prevent exactly this."
        : "  Unexpected: the device did not behave as the stale-registration bug predicts.")
    return reproduced
}

/// The same steps through RDMAMemory's registration cache: the monitor sees the munmap (in the
/// calling thread, through its munmap hook), the cache revokes the old region, and registering the address again gives a region for the new
/// pages, so the RDMA WRITE lands in the application's memory.
func showCacheFix(domain: ProtectionDomain, queuePair: QueuePair) throws -> Bool {
    let length = 64 * 1024
    print("\nThe same steps through RDMAMemory's RegistrationCache:")
    let cache = RegistrationCache(protectionDomain: domain)
    defer { cache.shutdown() }
    print("  Monitoring: \(cache.monitoring).")
    let buffer = try AnonymousMapping(length: length)
    let first = try cache.register(buffer.bytes, access: .rdma)
    let firstRkey = first.rkey
    print("  1. Registered \(length / 1024) KiB at 0x\(String(first.address, radix: 16)) through the cache (rkey \(firstRkey)).")
    first.release()
    try buffer.replaceWithFreshMapping()
    print("  2. munmap() + mmap(MAP_FIXED) at the same address, as before.")
    let again = try cache.register(buffer.bytes, access: .rdma)
    print("  3. Registered the same address again: rkey \(again.rkey), "
        + (again.rkey == firstRkey ? "THE OLD REGION (stale)." : "a new region for the new pages."))

    let (completion, landed) = try writePattern(length, domain: domain, queuePair: queuePair,
                                                to: again.address, rkey: again.rkey, id: 5, into: buffer)
    print("  4. RDMA WRITE of \(length) bytes through it: completion \(completion.status); the application's")
    print("     memory now holds \(landed) of \(length) written bytes.")
    let againRkey = again.rkey
    again.release()
    let statistics = cache.statistics
    print("  Cache: \(statistics.misses) misses, \(statistics.invalidations) invalidation, \(statistics.hits) hits.")
    let fixed = completion.status == .success && landed == length && againRkey != firstRkey
    print(fixed ? "  Fixed: the data is where the application's memory is." : "  NOT FIXED.")
    return fixed
}

/// RDMA WRITE of `length` bytes of 0xAB to `address` through `rkey`; returns the completion and
/// how many of those bytes the application now sees in `buffer` (the memory at that address).
func writePattern(_ length: Int, domain: ProtectionDomain, queuePair: QueuePair, to address: UInt, rkey: UInt32,
                  id: UInt64, into buffer: AnonymousMapping) throws -> (WorkCompletion, Int) {
    let payload = try AnonymousMapping(length: length)
    payload.fill { _ in 0xAB }
    let payloadRegion = try domain.registerMemory(payload.bytes, access: .rdma)
    try queuePair.postWrite([ScatterGatherElement(region: payloadRegion)],
                            remoteAddress: UInt64(address), rkey: rkey, id: id)
    let completion = try queuePair.sendCompletionQueue.waitForCompletions(1)[0]
    return (completion, buffer.count { $0 == 0xAB })
}

enum ExampleFailure: Error { case dataMismatch }

do {
    exit(try runExample())
} catch {
    print("error: \(error)")
    exit(1)
}
