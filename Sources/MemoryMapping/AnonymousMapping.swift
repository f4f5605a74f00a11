import CShims
#if canImport(Glibc)
import Glibc
#endif
import SystemPackage

/// A private anonymous mapping (`mmap(MAP_PRIVATE | MAP_ANONYMOUS)`) that tests, examples and
/// benchmarks register, unmap and map again at the same address: the events a registration
/// cache must survive.
///
/// Not `Sendable`: it owns the mapping, and unmapping it while another thread reads the bytes
/// is exactly the kind of race callers must arrange on purpose (pass `address` instead).
public final class AnonymousMapping {
    public private(set) var address: UInt
    public private(set) var length: Int
    public private(set) var isMapped: Bool

    /// Maps `length` bytes (rounded up to whole pages by the kernel), touching every page
    /// when `populate` is true so registration measures pinning, not first-touch faults.
    public init(length: Int, populate: Bool = true) throws {
        let flags = MAP_PRIVATE | MAP_ANONYMOUS | (populate ? MAP_POPULATE : 0)
        guard length > 0 else {
            throw MappingError(call: "mmap", argument: "length: \(length)", errno: .invalidArgument)
        }
        let pointer = mmap(nil, length, PROT_READ | PROT_WRITE, flags, -1, 0)
        guard let pointer, pointer != MAP_FAILED else {
            throw MappingError.fromErrno("mmap", argument: "length: \(length)")
        }
        address = UInt(bitPattern: pointer)
        self.length = length
        isMapped = true
    }

    deinit {
        if isMapped { munmap(UnsafeMutableRawPointer(bitPattern: address), length) }
    }

    public static var pageSize: Int { Int(sysconf(Int32(_SC_PAGESIZE))) }

    /// The mapping's bytes. Valid only while `isMapped`.
    public var bytes: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(bitPattern: address), count: length)
    }

    /// `munmap` of the whole mapping.
    public func unmap() throws {
        guard isMapped else { return }
        try check(munmap(UnsafeMutableRawPointer(bitPattern: address), length), "munmap")
        isMapped = false
    }

    /// `munmap`, then `mmap(MAP_FIXED)` of fresh zeroed pages at the same address: the same
    /// pointer the application holds now names different physical memory.
    public func replaceWithFreshMapping() throws {
        try unmap()
        try mapAgain()
    }

    /// One `mmap(MAP_FIXED)` over the live mapping: the kernel unmaps the old pages and maps
    /// fresh ones at the same address in one step. Use this where other threads run: between
    /// the two steps of `replaceWithFreshMapping()` another thread (malloc, a sanitizer's
    /// runtime) may map something into the hole, and `mapAgain()` then fails with EEXIST.
    public func replaceInPlace() throws {
        try map(flags: isMapped ? MAP_FIXED : Self.fixedNoReplace)
    }

    /// `mmap` at the old address after an `unmap()` (or an unmap done elsewhere). Throws
    /// EEXIST when something else was mapped into the hole meanwhile: mapping over it
    /// (`MAP_FIXED`) would destroy another thread's memory. ThreadSanitizer's runtime maps its
    /// 64 KiB metadata slabs into such holes, and a test that did this crashed it in its
    /// allocator, in another thread, much later.
    public func mapAgain() throws {
        try map(flags: Self.fixedNoReplace)
    }

    /// The caller unmapped the range itself (a raw system call): the mapping no longer owns
    /// it, and its `deinit` leaves whatever is mapped there now alone.
    public func forgetUnmapped() {
        isMapped = false
    }

    /// `MAP_FIXED_NOREPLACE` (Linux 4.17; glibc's headers name it only with _GNU_SOURCE).
    private static let fixedNoReplace: Int32 = 0x100000

    private func map(flags fixed: Int32) throws {
        let wanted = UnsafeMutableRawPointer(bitPattern: address)
        let pointer = mmap(wanted, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | fixed | MAP_POPULATE, -1, 0)
        guard let pointer, pointer != MAP_FAILED else {
            throw MappingError.fromErrno("mmap", argument: describe())
        }
        guard pointer == wanted else {  // a kernel before 4.17 takes NOREPLACE as a hint
            munmap(pointer, length)
            throw MappingError(call: "mmap", argument: describe(), errno: .fileExists)
        }
        isMapped = true
    }

    /// `madvise(advice)` over the whole mapping (e.g. `MADV_DONTNEED`: the next touch gets
    /// new zeroed pages at the same address).
    public func advise(_ advice: Int32) throws {
        try check(madvise(UnsafeMutableRawPointer(bitPattern: address), length, advice), "madvise")
    }

    /// `mprotect` of the whole mapping.
    public func protect(_ protection: Int32) throws {
        try check(mprotect(UnsafeMutableRawPointer(bitPattern: address), length, protection), "mprotect")
    }

    /// `mremap` to `newLength`, letting the kernel move it; the old range is gone after.
    public func remap(to newLength: Int) throws {
        let moved = mremap_shim(address, length, newLength)
        guard moved != MAP_FAILED, let moved else {
            throw MappingError.fromErrno("mremap", argument: describe())
        }
        address = UInt(bitPattern: moved)
        length = newLength
    }

    private func check(_ result: Int32, _ call: String) throws {
        guard result == 0 else { throw MappingError.fromErrno(call, argument: describe()) }
    }

    private func describe() -> String { "address: 0x\(String(address, radix: 16)), length: \(length)" }
}

/// mremap is variadic in glibc's header (the optional new address), which Swift cannot call.
private func mremap_shim(_ address: UInt, _ oldLength: Int, _ newLength: Int) -> UnsafeMutableRawPointer? {
    cshims_mremap_maymove(UnsafeMutableRawPointer(bitPattern: address), UInt(oldLength), UInt(newLength))
}
