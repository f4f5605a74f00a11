import Foundation
import Testing

/// Two copies of RDMAMemory in one process: a program that links the package (here the built
/// `rdmamemory`) run with the preload (libfabric's monitor and UCX's event source), which carries
/// a copy of its own. The program's
/// hooks bind every call; the preloaded copy must see that and refuse to start a second monitor,
/// loudly, and the program must go on with its own (hooks active), never hang.
@Suite("two copies of the hooks in one process")
struct TwoCopiesTests {
    @Test("the preload under a program that links RDMAMemory refuses loudly, for libfabric and for UCX; the program's hooks stay active")
    func preloadUnderALinkedProgram() throws {
        let bundle = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        let folder = URL(fileURLWithPath: bundle).deletingLastPathComponent()
        let tool = folder.appendingPathComponent("rdmamemory")
        let library = folder.appendingPathComponent("libRDMAMemoryPreload.so")
        try #require(FileManager.default.isExecutableFile(atPath: tool.path), "build it first: \(tool.path)")
        try #require(FileManager.default.fileExists(atPath: library.path), "build it first: \(library.path)")
        let process = Process()
        process.executableURL = tool
        process.arguments = ["info", "--json"]
        var environment = ProcessInfo.processInfo.environment
        environment["LD_PRELOAD"] = library.path
        environment["RDMAMEMORY_LIBFABRIC_IMPORT"] = "1"
        environment["RDMAMEMORY_UCX_EVENTS"] = "1"
        environment.removeValue(forKey: "RDMAMEMORY_HOOKS")
        process.environment = environment
        let output = Pipe(), errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        let exited = DispatchSemaphore(value: 0)
        process.terminationHandler = { _ in exited.signal() }
        try process.run()
        guard exited.wait(timeout: .now() + 120) == .success else {
            process.terminate()
            Issue.record("rdmamemory info with the preload did not finish in time")
            return
        }
        let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let stdout = output.fileHandleForReading.readDataToEndOfFile()
        #expect(process.terminationStatus == 0, "\(stderr)")
        #expect(stderr.contains("libfabric's memory monitor not replaced") && stderr.contains("links RDMAMemory itself"), "\(stderr)")
        #expect(stderr.contains("UCX's memory events not taken over"), "\(stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: stdout) as? [String: Any])
        let invalidation = try #require(json["invalidation"] as? [String: Any], "\(json.keys)")
        #expect(invalidation["hooks"] as? String == "active", "\(invalidation)")
    }
}
