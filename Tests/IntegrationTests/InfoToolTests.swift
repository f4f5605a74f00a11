import Foundation
import Testing

extension RxeIntegration {
    /// `rdmamemory info --json` against the real device: the binary the build put next to this
    /// test bundle, run as a user runs it, so the exit status and the whole JSON are checked.
    @Suite struct InfoTool {
        @Test func infoReportsTheRxeDeviceWithAnActivePort() throws {
            let bundle = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
            let tool = URL(fileURLWithPath: bundle).deletingLastPathComponent().appendingPathComponent("rdmamemory")
            try #require(FileManager.default.isExecutableFile(atPath: tool.path), "build it first: \(tool.path)")
            let process = Process()
            process.executableURL = tool
            process.arguments = ["info", "--json"]
            let output = Pipe()
            process.standardOutput = output
            try process.run()
            let data = output.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            let text = String(decoding: data, as: UTF8.self)
            #expect(process.terminationStatus == 0, "\(text)")

            let json = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any], "\(text)")
            let devices = try #require(json["devices"] as? [[String: Any]], "\(text)")
            let rxe = try #require(devices.first { $0["name"] as? String == Rxe.deviceName }, "\(text)")
            #expect((rxe["errors"] as? [String])?.isEmpty == true, "\(rxe)")
            let ports = try #require(rxe["ports"] as? [[String: Any]], "\(rxe)")
            let active = try #require(ports.first { $0["state"] as? String == "ACTIVE" }, "\(ports)")
            #expect(active["link_layer"] as? String == "Ethernet")
            #expect((active["gids"] as? [[String: Any]])?.isEmpty == false, "rxe0 has at least its link-local GID")
            #expect(rxe["odp"] is [String: Any], "the ODP query answered")
            #expect((json["invalidation"] as? [String: Any])?["mode"] as? String == "userfaultfd", "root in the VM")
        }
    }
}
