import CVerbs
import Foundation
import Synchronization

/// Delivers a device's asynchronous events (`ibv_get_async_event`) to a handler on a thread of
/// its own, until `stop()` or the end of the last reference.
///
/// The thread waits in `poll()` with a short timeout rather than blocking in
/// `ibv_get_async_event`, so `stop()` returns promptly (bounded by that timeout) on a device
/// that never reports anything.
public final class DeviceEventMonitor: Sendable {
    /// Shared with the thread, which may outlive a `stop()` by one poll timeout.
    private final class State: Sendable {
        let running = Atomic<Bool>(true)
        let finished = DispatchSemaphore(value: 0)
    }

    private let state = State()
    public let context: DeviceContext

    public init(context: DeviceContext, handler: @escaping @Sendable (DeviceEvent) -> Void) {
        self.context = context
        let thread = Thread { [state] in
            Self.deliver(context, state: state, handler: handler)
            state.finished.signal()
        }
        thread.name = "verbs-events-\(context.name)"
        thread.start()
    }

    deinit { stop() }

    /// Stops delivering; returns once the thread has left (within ~100 ms). Idempotent.
    /// Not from inside the handler: the thread would wait for itself.
    public func stop() {
        guard state.running.exchange(false, ordering: .acquiringAndReleasing) else { return }
        state.finished.wait()
    }

    private static func deliver(_ context: DeviceContext, state: State,
                                handler: @Sendable (DeviceEvent) -> Void) {
        var descriptor = pollfd(fd: context.pointer.pointee.async_fd, events: Int16(POLLIN), revents: 0)
        while state.running.load(ordering: .acquiring) {
            descriptor.revents = 0
            guard poll(&descriptor, 1, 100) > 0 else { continue }
            var event = ibv_async_event()
            guard ibv_get_async_event(context.pointer, &event) == 0 else { continue }
            let delivered = DeviceEvent(event)
            ibv_ack_async_event(&event)
            handler(delivered)
        }
    }
}

extension DeviceContext {
    /// The device's asynchronous events as an `AsyncSequence`; monitoring stops when the
    /// consuming task ends the iteration.
    public func events() -> AsyncStream<DeviceEvent> {
        AsyncStream { continuation in
            let monitor = DeviceEventMonitor(context: self) { continuation.yield($0) }
            continuation.onTermination = { _ in monitor.stop() }
        }
    }
}
