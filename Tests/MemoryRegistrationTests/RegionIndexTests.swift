import Foundation
import NotifierEngine
import Synchronization
import SharedTestSupport
import Testing
import Verbs
@testable import MemoryRegistration

/// Entries made for the index alone (a core that registers nothing and watches nothing); the
/// index holds them by address, so the tests keep them alive.
struct EntryFactory {
    let core: CacheCore = {
        var options = RegistrationCache.Options()
        options.monitoring = .explicitOnly
        return CacheCore(registrar: NullRegistrar(), options: options, monitor: nil)
    }()

    func entry(_ start: UInt, _ length: UInt, access: UInt32 = 0b111, key: UInt32) throws -> CacheEntry {
        let entry = try CacheEntry(core: core, range: AddressRange(start: start, length: length))
        entry.region = RegisteredRegion(lkey: key, rkey: key &+ 1, handle: UInt(key))
        entry.access = AccessFlags(rawValue: access)
        return entry
    }
}

@Suite("Region index") struct RegionIndexTests {
    let srcu = SRCUDomain()
    let factory = EntryFactory()

    func find(_ index: RegionIndex, _ start: UInt, _ length: UInt, access: UInt32 = 0b1) -> UInt32? {
        srcu.withReadLock {
            let bits = index.lookup(start: start, end: start + length, access: access)
            guard bits != 0 else { return nil }
            return Unmanaged<CacheEntry>.fromOpaque(UnsafeRawPointer(bitPattern: bits)!).takeUnretainedValue().region.lkey
        }
    }

    @Test func findsWhatCoversTheBufferOnly() throws {
        let index = RegionIndex(srcu: srcu)
        let entry = try factory.entry(0x10_0000, 0x4000, key: 1)
        index.insert(entry)
        #expect(find(index, 0x10_0000, 0x4000) == 1)
        #expect(find(index, 0x10_1000, 0x100) == 1)       // inside
        #expect(find(index, 0x10_3000, 0x1000) == 1)      // ends at the end
        #expect(find(index, 0x10_3000, 0x1001) == nil)    // runs past the end
        #expect(find(index, 0x0F_F000, 0x2000) == nil)    // starts before
        #expect(find(index, 0x20_0000, 0x10) == nil)      // elsewhere
    }

    @Test func needsAtLeastTheAskedAccess() throws {
        let index = RegionIndex(srcu: srcu)
        let readOnly = try factory.entry(0x10_0000, 0x1000, access: 0b001, key: 1)
        let wider = try factory.entry(0x10_0000, 0x1000, access: 0b011, key: 2)
        index.insert(readOnly)
        #expect(find(index, 0x10_0000, 0x1000, access: 0b001) == 1)
        #expect(find(index, 0x10_0000, 0x1000, access: 0b011) == nil)
        index.insert(wider)
        #expect(find(index, 0x10_0000, 0x1000, access: 0b011) == 2)
    }

    @Test("an entry spanning many granules is found from each of them")
    func spansGranules() throws {
        let index = RegionIndex(srcu: srcu, granuleShift: 16)
        let entry = try factory.entry(0x7_0000_8000, 1 << 20, key: 9)  // 1 MiB, not granule aligned
        index.insert(entry)
        for offset in stride(from: UInt(0), to: 1 << 20, by: 0x8000) {
            #expect(find(index, 0x7_0000_8000 + offset, 0x100) == 9)
        }
        #expect(index.count == 1)
        index.remove(entry)
        #expect(find(index, 0x7_0008_0000, 0x100) == nil)
        #expect(index.count == 0)
    }

    @Test("the top of the address space")
    func edges() throws {
        let index = RegionIndex(srcu: srcu)
        let top = UInt.max - 0x1FFF
        let entry = try factory.entry(top, 0x1000, key: 3)
        index.insert(entry)
        #expect(find(index, top, 0x1000) == 3)
        #expect(find(index, top + 0x800, 0x800) == 3)
        #expect(index.count == 1)
    }

    @Test("requests and entries reaching more than 128 MiB beyond the granule: the hint only widens, the entry decides")
    func longRequests() throws {
        let index = RegionIndex(srcu: srcu)
        let big = try factory.entry(0x100_0000_0000, 8 << 30, key: 5)
        index.insert(big)
        #expect(find(index, 0x100_0000_1000, 3 << 30) == 5)
        #expect(find(index, 0x100_0000_1000, 8 << 30) == nil)  // one page past its end
    }

    @Test("random inserts and removes agree with a plain list, through growth and slot reuse")
    func agreesWithAModel() throws {
        let index = RegionIndex(srcu: srcu, granuleShift: 16, initialCapacity: 16)
        var model: [CacheEntry] = []
        var kept: [CacheEntry] = []  // the index holds entries by address: keep every one alive
        var generator = SystemRandomNumberGenerator()
        let seed = UInt64.random(in: 0...UInt64.max, using: &generator)
        var random = SeededRandom(seed: seed)
        for key in UInt32(1)...4000 {
            if !model.isEmpty && random.next() % 3 == 0 {
                index.remove(model.remove(at: Int(random.next() % UInt64(model.count))))
            } else {
                let start = UInt(random.next() % 4096) << 12
                let length = UInt(1 + random.next() % 64) << 12
                let added = try factory.entry(start, length, access: UInt32(1 + random.next() % 7), key: key)
                model.append(added)
                kept.append(added)
                index.insert(added)
            }
            if key % 50 == 0 {
                for _ in 0..<20 {
                    let start = UInt(random.next() % 4200) << 12
                    let length = UInt(1 + random.next() % 8) << 10
                    let access = UInt32(1 + random.next() % 7)
                    let found = find(index, start, length, access: access)
                    let expected = model.contains { $0.covers(start: start, end: start + length, access: access) }
                    #expect((found != nil) == expected, "seed \(seed), lookup 0x\(String(start, radix: 16))+\(length)")
                    if let found, let entry = model.first(where: { $0.region.lkey == found }) {
                        #expect(entry.covers(start: start, end: start + length, access: access))
                    }
                }
            }
        }
        #expect(index.count == model.count, "seed \(seed)")
    }

    @Test("requests at any byte against page-aligned entries: found exactly when covered")
    func byteGranularRequests() throws {
        let index = RegionIndex(srcu: srcu, granuleShift: 16)
        var kept: [CacheEntry] = []
        var generator = SystemRandomNumberGenerator()
        let seed = UInt64.random(in: 0...UInt64.max, using: &generator)
        var random = SeededRandom(seed: seed)
        for key in UInt32(1)...300 {
            let start = 0x4000_0000 + (UInt(random.next() % 2048) << 12)
            let entry = try factory.entry(start, UInt(1 + random.next() % 40) << 12, key: key)
            kept.append(entry)
            index.insert(entry)
        }
        for _ in 0..<20_000 {
            let start = 0x4000_0000 + UInt(random.next() % (2100 << 12))
            let length = UInt(1 + random.next() % (1 << 16))
            let expected = kept.contains { $0.covers(start: start, end: start + length, access: 0b1) }
            #expect((find(index, start, length) != nil) == expected, "seed \(seed), 0x\(String(start, radix: 16))+\(length)")
        }
    }

    @Test("the CLOCK hand meets every entry once a turn, an entry over many granules too")
    func handMeetsEachEntryOnce() throws {
        let index = RegionIndex(srcu: srcu, granuleShift: 16, initialCapacity: 16)
        var hand = RegionIndex.Hand()
        #expect(index.entry(at: &hand) == nil, "an empty index")
        let entries = try (0..<200).map { n in
            try factory.entry(0x1_0000_0000 + UInt(n) * 0x3_0000, n % 10 == 0 ? 0x50000 : 0x1000, key: UInt32(n) + 1)
        }
        for entry in entries { index.insert(entry) }
        var met: [UInt32: Int] = [:]
        for _ in 0..<(2 * entries.count) {
            let entry = try #require(index.entry(at: &hand))
            met[entry.region.lkey, default: 0] += 1
        }
        #expect(met.count == entries.count && met.values.allSatisfy { $0 == 2 }, "two turns: each entry twice")
        for entry in entries.dropFirst() { index.remove(entry) }
        #expect(index.entry(at: &hand)?.region.lkey == 1)
        index.remove(entries[0])
        #expect(index.entry(at: &hand) == nil)
    }

    @Test("10^5 small entries: every one is found")
    func hundredThousand() throws {
        let index = RegionIndex(srcu: srcu)
        let count = 100_000
        let entries = try (0..<count).map { try factory.entry(0x1000_0000 + UInt($0) * 0x2000, 0x1000, key: UInt32($0) + 1) }
        for entry in entries { index.insert(entry) }
        let missing = (0..<count).filter { find(index, 0x1000_0000 + UInt($0) * 0x2000 + 8, 8) != UInt32($0) + 1 }
        #expect(missing.isEmpty)
    }
}
