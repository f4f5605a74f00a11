#if canImport(Glibc)
import Glibc
#endif
import CTestShims
import NotifierEngine
import MemoryMapping
import SharedTestSupport
import Synchronization
import Testing
@testable import MemoryRegistration

/// Whether this build runs under ThreadSanitizer (see `ForkTests`).
func runningUnderThreadSanitizer() -> Bool { dlsym(nil, "__tsan_init") != nil }

/// What a `fork()` child (without exec) gets from the parent's caches: a clear
/// `RegistrationError.forkedChild` on every call, never a hang, whatever the parent was doing
/// at the fork (a monitor's window open, another thread registering). The cache, its monitor,
/// its threads and its device registrations stay the parent's.
///
/// Not under ThreadSanitizer: its runtime does not support fork() in a multithreaded process
/// (a child stuck once in 20; in CI a child's report of "signal-unsafe call inside of a signal"
/// from free, with no frame of ours). The plain host run and the VM runs cover these.
@Suite("fork: a child gets .forkedChild, never a hang", .serialized,
       .disabled(if: runningUnderThreadSanitizer(), "fork() of a multithreaded process under ThreadSanitizer"))
struct ForkTests {
    /// Exit codes of the child.
    enum Answer: Int32 { case forkedChild = 0, registered = 10, otherError = 20 }

    /// Forks; the child registers `buffer` (a hit or a miss) and exits with what it got.
    static func childRegisters(_ cache: RegistrationCache, _ address: UInt, _ length: Int) -> Int32 {
        let pid = ctest_fork()
        if pid == 0 {
            let answer: Answer
            do {
                let registration = try cache.register(address: address, length: length, access: .rdma)
                registration.release()
                answer = .registered
            } catch .forkedChild(let call) where call == "register" {
                answer = .forkedChild
            } catch {
                answer = .otherError
            }
            _exit(answer.rawValue)
        }
        return ctest_wait_child(pid, 20_000)
    }

    @Test("a child registers a cached and a new buffer: .forkedChild for both")
    func hitAndMiss() throws {
        let cache = RegistrationCache(registrar: NullRegistrar())
        defer { cache.shutdown() }
        let cached = try AnonymousMapping(length: 65536)
        let held = try cache.register(cached.bytes, access: .rdma)
        #expect(Self.childRegisters(cache, cached.address, cached.length) == Answer.forkedChild.rawValue, "a hit")
        let fresh = try AnonymousMapping(length: 65536)
        #expect(Self.childRegisters(cache, fresh.address, fresh.length) == Answer.forkedChild.rawValue, "a miss")
        // The parent goes on as before.
        let again = try cache.register(cached.bytes, access: .rdma)
        #expect(again.lkey == held.lkey)
        again.release()
        held.release()
    }

    @Test("a child forked while a monitor's window is open does not wait for it")
    func windowOpenAtFork() throws {
        let cache = RegistrationCache(registrar: NullRegistrar())
        defer { cache.shutdown() }
        let buffer = try AnonymousMapping(length: 65536)
        let window = AddressSpace.process.beginInvalidation()
        let answer = Self.childRegisters(cache, buffer.address, buffer.length)
        window.end()
        #expect(answer == Answer.forkedChild.rawValue, "exit \(answer) (-2: the child hung)")
    }


    @Test("a child forked while other threads churn through the cache")
    func churnAtFork() throws {
        let cache = RegistrationCache(registrar: NullRegistrar())
        defer { cache.shutdown() }
        let buffers = try (0..<4).map { _ in try AnonymousMapping(length: 65536) }
        let spans = buffers.map { ($0.address, $0.length) }
        let stop = Atomic<Bool>(false)
        let churners = (0..<2).map { thread in spawn {
            var index = thread
            while !stop.load(ordering: .relaxed) {
                let (address, length) = spans[index % spans.count]
                if let registration = try? cache.register(address: address, length: length, access: .rdma) {
                    registration.release()
                }
                if index % 7 == 0 { cache.invalidate(address: address, length: length) }
                index += 1
            }
        } }
        var answers: [Int32] = []
        for round in 0..<20 {
            let (address, length) = spans[round % spans.count]
            answers.append(Self.childRegisters(cache, address, length))
        }
        stop.store(true, ordering: .relaxed)
        for churner in churners { churner.join() }
        #expect(answers.allSatisfy { $0 == Answer.forkedChild.rawValue }, "\(answers) (-2: a child hung)")
    }
}
