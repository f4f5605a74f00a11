// How deep the calling thread is in invalidation callbacks (NotifierEngine's AddressSpace counts
// it around every callback it makes).
//
// Why: a callback that waits for the invalidation it runs in never returns (a registration
// cache's miss from inside a callback waits in `readBegin` for its own window). The engine asks
// this counter where it would wait and throws `.wouldDeadlock` instead. Why C: Swift has no
// thread-local storage of its own; an initial-exec `_Thread_local` is one load, and costs the
// hit path nothing (it is read only where a wait is about to begin).
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

extern _Thread_local int cmmu_callback_depth_value __attribute__((tls_model("initial-exec")));

static inline void cmmu_callback_depth_enter(void) { cmmu_callback_depth_value++; }
static inline void cmmu_callback_depth_leave(void) { cmmu_callback_depth_value--; }
static inline int cmmu_callback_depth(void) { return cmmu_callback_depth_value; }

#ifdef __cplusplus
}
#endif
