#if canImport(Glibc)
import Glibc
#endif
import CMemoryHooks
import Foundation
import NotifierEngine
import Monitors
import Testing

/// `RDMAMEMORY_HOOKS=off` is read once, when the first monitor starts, so it is tested in a
/// process of its own: this test bundle again, running only `inChild` with the variable set.
@Suite("RDMAMEMORY_HOOKS=off")
struct HooksOffTests {
    static let childTest = "hooksOffInChild"

    @Test("switches every hook off; the monitor says so and unmaps are events")
    func hooksOff() throws {
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/proc/self/exe")
        child.arguments = ["--testing-library", "swift-testing", "--filter", Self.childTest]
        var environment = ProcessInfo.processInfo.environment
        environment["RDMAMEMORY_HOOKS"] = "off"
        child.environment = environment
        let output = Pipe()
        child.standardOutput = output
        child.standardError = output
        try child.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        child.waitUntilExit()
        #expect(child.terminationStatus == 0, "\(text)")
        #expect(text.contains("\(Self.childTest)()") && text.contains("passed"), "the child did not run the test:\n\(text)")
        #expect(!text.contains("skipped"), "\(text)")
    }

    @Test(.enabled(if: ProcessInfo.processInfo.environment["RDMAMEMORY_HOOKS"] == "off", "runs in the child process only"))
    func hooksOffInChild() throws {
        let space = AddressSpace()
        let monitor = try UserfaultfdMonitor(space: space)
        defer { monitor.shutdown() }
        #expect(cmemhooks_disabled() != 0)
        #expect(monitor.hooks == .disabledByEnvironment)
        #expect(MemoryMonitor.Mode.userfaultfd(monitor.privilege, hooks: monitor.hooks).description.contains("RDMAMEMORY_HOOKS=off"))
        let length = 16 * pageSize
        let base = try mapAnonymous(length)
        try monitor.watch(try range(base, length))
        let probe = try RangeProbe(space, try range(base, length))
        #expect(mprotect(UnsafeMutableRawPointer(bitPattern: base), Int(pageSize), PROT_READ) == 0)
        #expect(probe.seenByNewLookup.isEmpty, "a hook saw the mprotect")
        unmap(base, length)
        #expect(probe.seenByNewLookup == [.unmap], "the unmap still arrives, as an event")
        #expect(monitor.statistics.interceptedUnmaps == 0 && monitor.statistics.unmapEvents == 1)
    }
}
