/// Renders an `InfoReport` for people: one section per question (which devices, how
/// invalidations arrive, which limits apply), errors next to what they concern.
enum InfoTextFormatter {
    static func format(_ report: InfoReport) -> String {
        var lines: [String] = ["RDMA devices"]
        if report.devices.isEmpty && report.errors.isEmpty { lines.append("  no RDMA devices") }
        for error in report.errors { lines.append("  error: \(error)") }
        for device in report.devices { lines += deviceLines(device) }
        lines.append("")
        lines += invalidationLines(report.invalidation)
        lines.append("")
        lines += limitLines(report.limits)
        return lines.joined(separator: "\n") + "\n"
    }

    static func deviceLines(_ device: DeviceReport) -> [String] {
        var header = "  \(device.name)"
        if let guid = device.nodeGUID { header += ", node GUID \(guid)" }
        if let firmware = device.firmwareVersion, !firmware.isEmpty { header += ", firmware \(firmware)" }
        var lines = [header]
        if let regions = device.maxRegions, let bytes = device.maxRegionBytes {
            lines.append("    max_mr \(regions), max_mr_size \(ByteCount.format(bytes))")
        }
        for port in device.ports {
            let mtu = port.activeMTU.map(String.init) ?? "unknown"
            lines.append("    port \(port.number): \(port.state), active MTU \(mtu), link layer \(port.linkLayer)"
                + (port.lid != 0 ? ", LID \(port.lid)" : ""))
            if port.gids.isEmpty { lines.append("      no GIDs") }
            for gid in port.gids {
                lines.append("      GID \(gid.index): \(gid.address)" + (gid.type.map { " (\($0))" } ?? ""))
            }
        }
        if let odp = device.onDemandPaging {
            if odp.supported || !odp.general.isEmpty {
                lines.append("    on-demand paging: \(odp.general.joined(separator: " "))")
                for (transport, caps) in [("RC", odp.reliableConnected), ("UC", odp.unreliableConnected),
                                          ("UD", odp.unreliableDatagram)] {
                    lines.append("      \(transport): " + (caps.isEmpty ? "none" : caps.joined(separator: " ")))
                }
            } else {
                lines.append("    on-demand paging: not supported")
            }
        }
        if let cache = device.cacheDefaults {
            let bound = switch cache.pinnedBytesBound {
            case "RLIMIT_MEMLOCK": "3/4 of RLIMIT_MEMLOCK"
            case "device": "the device's max_mr_size"
            default: cache.pinnedBytesBound
            }
            lines.append("    registration cache defaults: at most \(cache.maxRegions) regions, "
                + "\(ByteCount.format(UInt64(clamping: cache.maxPinnedBytes))) pinned (bound: \(bound))")
        }
        for error in device.errors { lines.append("    error: \(error)") }
        return lines
    }

    static func invalidationLines(_ invalidation: InvalidationReport) -> [String] {
        var lines = ["Invalidations in this process"]
        switch invalidation.mode {
        case "userfaultfd":
            lines.append("  mode: userfaultfd (\(invalidation.privilege ?? "?") privilege): unmaps, mremap, "
                + "madvise(DONTNEED/REMOVE) and brk of watched memory are seen")
        case "explicit_only":
            lines.append("  mode: explicit invalidation only: memory that may be unmapped is registered uncached")
        default:
            lines.append("  mode: \(invalidation.mode): memory is registered uncached")
        }
        lines.append("  why: \(invalidation.detail)")
        let hooks: String = switch invalidation.hooks {
        case "active": "active: munmap() through the C library is invalidated in the calling thread"
        case "active_except_munmap": "mprotect/shmat hooked; munmap() is seen as a userfaultfd event"
        case "off": "off (RDMAMEMORY_HOOKS=off): unmaps are userfaultfd events only; mprotect and shmat are not seen"
        case "unavailable": "unavailable (no free slot): unmaps are userfaultfd events only"
        case let other?: other
        case nil: "not in use (no userfaultfd monitor)"
        }
        lines.append("  munmap hooks: \(hooks)"
            + (invalidation.hooksEnvironment.map { " [RDMAMEMORY_HOOKS=\($0)]" } ?? ""))
        lines.append("  shared memory: \(invalidation.cachesSharedMemory ? "cached (opted in)" : invalidation.sharedMemory)")
        lines.append("  vm.unprivileged_userfaultfd = \(invalidation.unprivilegedUserfaultfd.map(String.init) ?? "unreadable")")
        lines.append("  /dev/userfaultfd: " + (!invalidation.devUserfaultfdExists ? "absent"
            : invalidation.devUserfaultfdAccessible ? "present, accessible to this process"
            : "present, not accessible to this process"))
        return lines
    }

    static func limitLines(_ limits: ProcessLimitsReport) -> [String] {
        var lines = ["Limits"]
        let soft = limits.memlockSoft.map(\.description) ?? "unknown"
        let hard = limits.memlockHard.map(\.description) ?? "unknown"
        lines.append("  RLIMIT_MEMLOCK: soft \(soft), hard \(hard)"
            + (limits.isRoot ? " (root: may pin beyond it)" : ""))
        lines.append("  vm.max_map_count = \(limits.maxMapCount.map(String.init) ?? "unreadable")"
            + " (every watched granule may split a mapping)")
        return lines
    }
}
