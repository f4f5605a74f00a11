import Foundation
import Testing
@testable import RDMAMemoryTool
import Verbs

/// The tool's rendering and encoding, over reports built by hand: what scripts read (JSON keys,
/// the `unlimited` value, errors and the exit decision) and what people read (text sections).
@Suite struct InfoReportTests {
    static let rxe = DeviceReport(
        name: "rxe0", nodeGUID: "5054:00ff:fe12:3456", firmwareVersion: "", maxRegions: 262_144,
        maxRegionBytes: UInt64.max,
        ports: [PortReport(number: 1, state: "ACTIVE", activeMTU: 1024, linkLayer: "Ethernet", lid: 0,
                           gids: [GIDReport(index: 0, address: "fe80::5054:ff:fe12:3456", type: "RoCE v2")])],
        onDemandPaging: OnDemandPagingReport(supported: true, general: ["ODP_SUPPORT"],
                                             reliableConnected: ["ODP_SUPPORT_SEND", "ODP_SUPPORT_WRITE"],
                                             unreliableConnected: [], unreliableDatagram: ["ODP_SUPPORT_SEND"]),
        cacheDefaults: CacheDefaultsReport(maxRegions: 131_072, maxPinnedBytes: 6 << 20, pinnedBytesBound: "RLIMIT_MEMLOCK"))

    static let invalidation = InvalidationReport(
        mode: "userfaultfd", privilege: "full", hooks: "active", munmapHooksActive: true, hooksEnvironment: nil,
        detail: "userfaultfd (full); ...", cachesSharedMemory: false, sharedMemory: InvalidationReport.sharedMemoryRule,
        unprivilegedUserfaultfd: 0, devUserfaultfdExists: true, devUserfaultfdAccessible: false)

    static let limits = ProcessLimitsReport(memlockSoft: .bytes(8 << 20), memlockHard: .unlimited, isRoot: false,
                                            maxMapCount: 65_530)

    static func object(_ report: InfoReport) throws -> [String: Any] {
        let text = try report.jsonText()
        #expect(text.hasSuffix("}\n") && text.filter { $0 == "\n" }.count == 1, "one object on one line")
        return try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    @Test func jsonHasTheStableKeysAndUnlimitedAsAString() throws {
        let json = try Self.object(InfoReport(devices: [Self.rxe], invalidation: Self.invalidation, limits: Self.limits))
        #expect(json["schema_version"] as? Int == 1)
        let device = try #require((json["devices"] as? [[String: Any]])?.first)
        #expect(device["name"] as? String == "rxe0")
        #expect(device["node_guid"] as? String == "5054:00ff:fe12:3456")
        let port = try #require((device["ports"] as? [[String: Any]])?.first)
        #expect(port["state"] as? String == "ACTIVE")
        #expect(port["active_mtu"] as? Int == 1024)
        #expect(port["link_layer"] as? String == "Ethernet")
        let gid = try #require((port["gids"] as? [[String: Any]])?.first)
        #expect(gid["type"] as? String == "RoCE v2" && gid["index"] as? Int == 0)
        let odp = try #require(device["odp"] as? [String: Any])
        #expect(odp["rc"] as? [String] == ["ODP_SUPPORT_SEND", "ODP_SUPPORT_WRITE"])
        #expect(odp["ud"] as? [String] == ["ODP_SUPPORT_SEND"])
        let cache = try #require(device["cache_defaults"] as? [String: Any])
        #expect(cache["max_pinned_bytes"] as? Int == 6 << 20 && cache["pinned_bytes_bound"] as? String == "RLIMIT_MEMLOCK")
        let invalidation = try #require(json["invalidation"] as? [String: Any])
        #expect(invalidation["mode"] as? String == "userfaultfd")
        #expect(invalidation["munmap_hooks_active"] as? Bool == true)
        #expect(invalidation["vm_unprivileged_userfaultfd"] as? Int == 0)
        #expect(invalidation["dev_userfaultfd_accessible"] as? Bool == false)
        let limits = try #require(json["limits"] as? [String: Any])
        #expect(limits["rlimit_memlock_soft"] as? Int == 8 << 20)
        #expect(limits["rlimit_memlock_hard"] as? String == "unlimited")
        #expect(limits["vm_max_map_count"] as? Int == 65_530)
    }

    @Test func jsonRoundTrips() throws {
        let report = InfoReport(devices: [Self.rxe], invalidation: Self.invalidation, limits: Self.limits)
        let decoded = try JSONDecoder().decode(InfoReport.self, from: Data(try report.jsonText().utf8))
        #expect(decoded == report)
    }

    @Test func noDevicesIsNotAnError() throws {
        let report = InfoReport(devices: [], invalidation: Self.invalidation, limits: Self.limits)
        #expect(!report.hasErrors)
        #expect(InfoTextFormatter.format(report).contains("  no RDMA devices\n"))
        #expect((try Self.object(report)["devices"] as? [Any])?.isEmpty == true)
    }

    @Test func aFailedDeviceQueryIsShownAndIsAnError() throws {
        var broken = Self.rxe
        broken.errors = ["ibv_query_device: Input/output error (errno 5)"]
        let report = InfoReport(devices: [broken], invalidation: Self.invalidation, limits: Self.limits)
        #expect(report.hasErrors)
        let text = InfoTextFormatter.format(report)
        #expect(text.contains("    error: ibv_query_device: Input/output error (errno 5)"))
        #expect(!text.contains("no RDMA devices"))
        let device = try #require((try Self.object(report)["devices"] as? [[String: Any]])?.first)
        #expect(device["errors"] as? [String] == broken.errors)
    }

    @Test func textShowsPortsGIDsODPAndLimits() {
        let text = InfoTextFormatter.format(InfoReport(devices: [Self.rxe], invalidation: Self.invalidation,
                                                       limits: Self.limits))
        #expect(text.contains("  rxe0, node GUID 5054:00ff:fe12:3456\n"))
        #expect(text.contains("    port 1: ACTIVE, active MTU 1024, link layer Ethernet\n"))
        #expect(text.contains("      GID 0: fe80::5054:ff:fe12:3456 (RoCE v2)\n"))
        #expect(text.contains("    on-demand paging: ODP_SUPPORT\n      RC: ODP_SUPPORT_SEND ODP_SUPPORT_WRITE\n      UC: none\n"))
        #expect(text.contains("6 MiB (6291456) pinned (bound: 3/4 of RLIMIT_MEMLOCK)"))
        #expect(text.contains("  munmap hooks: active"))
        #expect(text.contains("  /dev/userfaultfd: present, not accessible to this process\n"))
        #expect(text.contains("  RLIMIT_MEMLOCK: soft 8 MiB (8388608), hard unlimited\n"))
        #expect(text.contains("  vm.max_map_count = 65530"))
    }

    @Test func noODPSaysNotSupported() {
        var device = Self.rxe
        device.onDemandPaging = OnDemandPagingReport(supported: false, general: [], reliableConnected: [],
                                                     unreliableConnected: [], unreliableDatagram: [])
        let text = InfoTextFormatter.format(InfoReport(devices: [device], invalidation: Self.invalidation, limits: Self.limits))
        #expect(text.contains("    on-demand paging: not supported\n"))
        #expect(!text.contains("RC:"))
    }

    @Test func capabilityBitsDecodeToNamesAndKeepUnknownBits() {
        #expect(OnDemandPagingReport.names(OnDemandPagingCapabilities.Transport(rawValue: 0b1_0010_1001 | 1 << 9)) ==
            ["ODP_SUPPORT_SEND", "ODP_SUPPORT_READ", "ODP_SUPPORT_SRQ_RECV", "0x300"])
        #expect(OnDemandPagingReport.names(OnDemandPagingCapabilities.Transport(rawValue: 0xc0)) ==
            ["ODP_SUPPORT_FLUSH", "ODP_SUPPORT_ATOMIC_WRITE"])
        #expect(OnDemandPagingReport.names(OnDemandPagingCapabilities.General(rawValue: 3)) ==
            ["ODP_SUPPORT", "ODP_SUPPORT_IMPLICIT"])
    }

    @Test func guidsAreGroupedLikeIbvDevinfo() {
        #expect(DeviceReport.formatGUID(0x5054_00ff_fe12_3456) == "5054:00ff:fe12:3456")
        #expect(DeviceReport.formatGUID(0x1) == "0000:0000:0000:0001")
        #expect(DeviceReport.formatGUID(0) == nil)
    }

    @Test func byteCountsScaleOnlyWhenExact() {
        #expect(ByteCount.format(8 << 20) == "8 MiB (8388608)")
        #expect(ByteCount.format(1000) == "1000 bytes")
        #expect(ByteCount.format(UInt64.max) == "no limit (18446744073709551615)")
        #expect(ByteCount.format(UInt64(Int.max)) == "no limit (9223372036854775807)")
    }

    @Test func memlockDecodesNumberOrUnlimitedOnly() throws {
        let decoded = try JSONDecoder().decode([ResourceLimit].self, from: Data(#"[42,"unlimited"]"#.utf8))
        #expect(decoded == [.bytes(42), .unlimited])
        #expect(throws: DecodingError.self) { try JSONDecoder().decode([ResourceLimit].self, from: Data(#"["lots"]"#.utf8)) }
    }
}
