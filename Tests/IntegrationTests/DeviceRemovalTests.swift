import Foundation
import MemoryMapping
import MemoryRegistration
import SharedTestSupport
import Testing
import Verbs

/// The device goes away under a cache holding regions (`rdma link delete`): the kernel
/// disassociates the process's context (Linux 6.x's newest rxe; Debian's 6.1 rxe cannot, and its
/// `rdma link delete` waits for the process to close the device), the cache hears the device's
/// fatal event, revokes every region and refuses later calls with a typed error. It deletes
/// rxe0, so it runs alone, in a VM run of its own (`scripts/run-tests`, newest kernel), enabled
/// by RDMAMEMORY_DEVICE_REMOVAL=1.
@Suite(.enabled(if: Rxe.isAvailable && ProcessInfo.processInfo.environment["RDMAMEMORY_DEVICE_REMOVAL"] == "1",
                "deletes rxe0: run alone through scripts/rxe-vm with RDMAMEMORY_DEVICE_REMOVAL=1"))
struct DeviceRemovalTests {
    @Test("deleting the rxe link revokes the cache's regions; later calls throw .shutDown")
    func deleteTheLink() throws {
        let context = try DeviceContext(name: Rxe.deviceName)
        let domain = try ProtectionDomain(context: context)
        let cache = RegistrationCache(protectionDomain: domain)
        let buffer = try AnonymousMapping(length: 65536)
        let other = try AnonymousMapping(length: 65536)
        let held = try cache.register(buffer.bytes, access: .rdma)
        #expect(Bool(held.isCached))

        let process = Process()
        process.executableURL = systemTool("rdma")
        process.arguments = ["link", "delete", Rxe.deviceName]
        let exited = DispatchSemaphore(value: 0)
        process.terminationHandler = { _ in exited.signal() }
        try process.run()
        guard exited.wait(timeout: .now() + 60) == .success else {
            Issue.record("rdma link delete \(Rxe.deviceName) did not return")
            held.release()
            return
        }
        #expect(process.terminationStatus == 0)

        // The device's fatal event arrives on the event monitor's thread: poll for its effect.
        _ = RxeIntegration.DeviceEvents.waitUntil { held.isRevoked }
        let revoked = held.isRevoked
        #expect(revoked, "the region of a removed device was not revoked")
        do {
            let late = try cache.register(other.bytes, access: .rdma)
            Issue.record("a register after the device went away succeeded (cached: \(late.isCached))")
            late.release()
        } catch {
            guard case .shutDown(let reason) = error else {
                Issue.record("\(error), not .shutDown")
                return
            }
            #expect(reason.contains("fatal"), "\(reason)")
        }
        held.release()
        #expect(finishes(within: 30) { cache.shutdown() }, "shutdown after device removal hung")
    }
}
