import Foundation
import Synchronization
import Testing
import Verbs

extension RxeIntegration {
    /// The device's asynchronous events reach the application: taking the netdev under rxe0
    /// down and up again reports the port going down and coming back.
    @Suite struct DeviceEvents {
        @Test func portDownAndUp() throws {
            let context = try DeviceContext(name: Rxe.deviceName)
            let seen = Mutex<[DeviceEvent]>([])
            let monitor = DeviceEventMonitor(context: context) { event in seen.withLock { $0.append(event) } }
            defer { monitor.stop() }

            let netdev = ProcessInfo.processInfo.environment["RDMAMEMORY_RXE_NETDEV"] ?? "dummy0"
            try Self.ip("link", "set", netdev, "down")
            defer { try? Self.ip("link", "set", netdev, "up") }
            #expect(Self.waitUntil { seen.withLock { $0.contains(.portError(port: 1)) } }, "\(seen.withLock { $0 })")
            try Self.ip("link", "set", netdev, "up")
            #expect(Self.waitUntil { seen.withLock { $0.contains(.portActive(port: 1)) } }, "\(seen.withLock { $0 })")
        }

        @Test("stopping a monitor on a quiet device returns promptly, twice")
        func stopIsPromptAndIdempotent() throws {
            let monitor = DeviceEventMonitor(context: try DeviceContext(name: Rxe.deviceName)) { _ in }
            let start = ContinuousClock.now
            monitor.stop()
            monitor.stop()
            #expect(ContinuousClock.now - start < .seconds(5))
        }

        static func ip(_ arguments: String...) throws {
            let process = Process()
            process.executableURL = systemTool("ip")
            process.arguments = arguments
            try process.run()
            process.waitUntilExit()
            #expect(process.terminationStatus == 0, "ip \(arguments.joined(separator: " "))")
        }

        static func waitUntil(_ condition: () -> Bool) -> Bool {
            let deadline = ContinuousClock.now + .seconds(20)
            while ContinuousClock.now < deadline {
                if condition() { return true }
                usleep(20_000)
            }
            return false
        }
    }
}
