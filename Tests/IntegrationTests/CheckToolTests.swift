import Foundation
import Testing

extension RxeIntegration {
    /// `rdmamemory check rxe0 --json` against the real device: the binary the build put next to
    /// this test bundle, run as a user runs it, so its exit status, the control and every row
    /// are checked as scripts will read them.
    @Suite struct CheckTool {
        /// Runs the built `rdmamemory` with `arguments`, bounded; its exit status and stdout.
        static func run(_ arguments: [String], environment extra: [String: String] = [:],
                        timeout: DispatchTime = .now() + 180) throws -> (status: Int32, output: Data) {
            let bundle = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
            let tool = URL(fileURLWithPath: bundle).deletingLastPathComponent().appendingPathComponent("rdmamemory")
            try #require(FileManager.default.isExecutableFile(atPath: tool.path), "build it first: \(tool.path)")
            let process = Process()
            process.executableURL = tool
            process.arguments = arguments
            process.environment = ProcessInfo.processInfo.environment.merging(extra) { $1 }
            let output = Pipe()
            process.standardOutput = output
            let exited = DispatchSemaphore(value: 0)
            process.terminationHandler = { _ in exited.signal() }
            try process.run()
            // The whole report is a few KiB, well inside the pipe's buffer: read it after the exit.
            guard exited.wait(timeout: timeout) == .success else {
                process.terminate()
                Issue.record("rdmamemory \(arguments.joined(separator: " ")) did not finish in time")
                return (-1, Data())
            }
            return (process.terminationStatus, output.fileHandleForReading.readDataToEndOfFile())
        }

        @Test func checkProvesTheCacheOnTheRxeDevice() throws {
            let (status, data) = try Self.run(["check", Rxe.deviceName, "--json"])
            let text = String(decoding: data, as: UTF8.self)
            #expect(status == 0, "\(text)")
            let json = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any], "\(text)")
            #expect(json["schema_version"] as? Int == 1)
            #expect(json["device"] as? String == Rxe.deviceName)
            #expect(json["passed"] as? Bool == true && json["exit_status"] as? Int == 0, "\(json["failures"] ?? "")")
            #expect((json["errors"] as? [String])?.isEmpty == true, "\(json["errors"] ?? "")")
            #expect((json["monitoring"] as? String)?.hasPrefix("userfaultfd") == true, "root in the VM")

            let control = try #require(json["control"] as? [String: Any], "\(text)")
            #expect(control["outcome"] as? String == "stale_as_expected", "\(control)")
            #expect(control["bytes_landed"] as? Int == 0 && control["bytes_written"] as? Int == 65536, "\(control)")

            let rows = try #require(json["rows"] as? [[String: Any]], "\(text)")
            #expect(Set(rows.compactMap { $0["change"] as? String }) == [
                "munmap_mmap_fixed", "raw_munmap_mmap", "mremap", "madvise_dontneed", "free_malloc",
                "brk_shrink_grow", "memfd_ftruncate", "shmat_remap", "madvise_guard_install",
            ])
            for row in rows {
                if row["change"] as? String == "madvise_guard_install", row["result"] as? String == "skipped" {
                    // Linux before 6.13 (Debian 12's 6.1) refuses the advice.
                    #expect((row["detail"] as? String)?.contains("not on this kernel") == true, "\(row)")
                    continue
                }
                #expect(row["result"] as? String == "fresh", "\(row)")
                #expect(row["bytes_landed"] as? Int == 65536 && row["bytes_written"] as? Int == 65536, "\(row)")
                #expect(row["new_region"] as? Bool == true, "\(row)")
            }
            let anonymous = rows.filter { ["munmap_mmap_fixed", "raw_munmap_mmap", "madvise_dontneed"]
                .contains($0["change"] as? String) }
            #expect(anonymous.allSatisfy { $0["cached_before"] as? Bool == true && $0["cached_after"] as? Bool == true },
                    "anonymous memory is cached, before and after: \(anonymous)")
            let memfd = try #require(rows.first { $0["change"] as? String == "memfd_ftruncate" })
            #expect(memfd["cached_after"] as? Bool == false && memfd["uncached_reason"] is String,
                    "shared memory is registered uncached by rule: \(memfd)")

            let odp = try #require(json["odp"] as? [String: Any], "\(text)")
            switch odp["verdict"] as? String {
            case "not_offered":
                #expect(odp["offered"] as? Bool == false)
            case "safe", "unsafe":
                #expect(odp["offered"] as? Bool == true)
                #expect(odp["bytes_written"] as? Int == 65536 && odp["mtu"] is Int, "\(odp)")
            default:
                Issue.record("the ODP check did not answer: \(odp)")
            }
        }

        /// The check must also *fail* when the cache is stale: with the hooks off, shmat(SHM_REMAP)
        /// replaces cached memory with no event at all (documented), so that row must be STALE and
        /// the exit status 1, while every row userfaultfd reports stays fresh.
        @Test func withTheHooksOffTheShmatRowIsStaleAndTheCheckFails() throws {
            let (status, data) = try Self.run(["check", Rxe.deviceName, "--json"], environment: ["RDMAMEMORY_HOOKS": "off"])
            let text = String(decoding: data, as: UTF8.self)
            #expect(status == 1, "\(text)")
            let json = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any], "\(text)")
            #expect((json["control"] as? [String: Any])?["outcome"] as? String == "stale_as_expected")
            let rows = try #require(json["rows"] as? [[String: Any]], "\(text)")
            let shmat = try #require(rows.first { $0["change"] as? String == "shmat_remap" }, "\(text)")
            #expect(shmat["result"] as? String == "stale" && shmat["bytes_landed"] as? Int == 0, "\(shmat)")
            #expect(shmat["new_region"] as? Bool == false, "the region of the replaced pages was served: \(shmat)")
            for row in rows where ["munmap_mmap_fixed", "raw_munmap_mmap", "mremap", "madvise_dontneed"]
                .contains(row["change"] as? String) {
                #expect(row["result"] as? String == "fresh", "userfaultfd still reports this: \(row)")
            }
            let failures = try #require(json["failures"] as? [String], "\(text)")
            #expect(failures.contains { $0.hasPrefix("shmat(SHM_REMAP) over cached memory: STALE") }, "\(failures)")
        }

        @Test func anUnknownDeviceFailsAndNamesTheDevicesPresent() throws {
            let (status, data) = try Self.run(["check", "no-such-device"])
            let text = String(decoding: data, as: UTF8.self)
            #expect(status == 1, "\(text)")
            #expect(text.contains("ibv_open_device(name: \"no-such-device\")"), "\(text)")
            #expect(text.contains("devices present: ") && text.contains(Rxe.deviceName), "\(text)")
        }
    }
}
