import MemoryMapping
import Verbs

/// Measures whether an on-demand-paging region receives an RDMA WRITE whole, at the port's
/// active MTU. Capability bits are not enough: Linux 7.3's rxe reports ODP for RC WRITE, yet its
/// copy loop ignores the offset inside a page, so at MTU 1024 each page keeps only one of its
/// four packets, written over its first KiB (RXE-VM.md). Reported, never failing the check: the
/// cache pins memory and does not use ODP.
enum OnDemandPagingCheck {
    static func run(context: DeviceContext, domain: ProtectionDomain, writer: LoopbackWriter, mtu: Int?,
                    length: Int) -> OnDemandPagingResult {
        var result = OnDemandPagingResult(offered: false, mtu: mtu, bytesWritten: length, bytesLanded: 0,
                                          bytesChanged: 0, verdict: .error)
        do {
            let caps = try context.queryOnDemandPaging()
            result.offered = caps.isSupported && caps.reliableConnected.contains(.write)
            guard result.offered else {
                result.verdict = .notOffered
                return result
            }
            let mapping = try AnonymousMapping(length: length)  // mmap: page-aligned
            let region = try domain.registerMemory(mapping.bytes, access: [.rdma, .onDemand])
            let outcome = try writer.write(to: region.address, rkey: region.rkey, observing: mapping.bytes)
            try region.deregister()
            result.bytesWritten = outcome.bytesWritten
            result.bytesLanded = outcome.bytesLanded
            result.bytesChanged = outcome.bytesChanged
            result.verdict = outcome.bytesLanded == outcome.bytesWritten ? .safe : .unsafe
            if result.verdict == .unsafe, let mtu { result.detail = placement(ofChangesIn: mapping.bytes, mtu: mtu) }
        } catch {
            result.detail = "\(error)"
        }
        return result
    }

    /// Where the changed bytes are, in words: rxe 7.3's bug puts all of them in the first MTU
    /// of each page, which tells that bug from any other loss.
    static func placement(ofChangesIn bytes: UnsafeMutableRawBufferPointer, mtu: Int) -> String {
        let page = AnonymousMapping.pageSize
        var changed = 0
        var inFirstMTU = 0
        for (index, byte) in bytes.enumerated() where byte != 0 {
            changed += 1
            if index % page < mtu { inFirstMTU += 1 }
        }
        guard changed > 0 else { return "nothing reached the buffer" }
        return changed == inFirstMTU
            ? "every changed byte lies in the first \(mtu) bytes (one MTU) of its \(page)-byte page"
            : "\(inFirstMTU) of \(changed) changed bytes lie in the first \(mtu) bytes (one MTU) of their \(page)-byte page"
    }
}
