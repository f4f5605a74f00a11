import CMemoryHooks

/// This monitor's slot in the hooks' granule map (`CMemoryHooks`): which 2 MiB chunks hold its
/// registered granules, read lock-free by every hooked call of the process. Counts go up before
/// the kernel registers and down after it unregistered, so a hook that reads zero knows the
/// memory is not registered at that instant (a watch racing it either registers before the
/// call, and the kernel reports an unmap, or after, and its probe sees the change). No slot
/// (hooks off, or all taken): every method does nothing.
struct HookSlot: Sendable {
    let index: Int32

    static let none = HookSlot(index: -1)

    var isActive: Bool { index >= 0 }

    func adjust(granule start: UInt, size: UInt, registered: Int32) -> Bool {
        guard isActive else { return true }
        return cmemhooks_slot_adjust(index, start, start &+ size, registered) == 0
    }
}
