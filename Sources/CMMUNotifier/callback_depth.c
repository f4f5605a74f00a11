// The calling thread's depth in invalidation callbacks (callback_depth.h says why).
#include "callback_depth.h"

_Thread_local int cmmu_callback_depth_value __attribute__((tls_model("initial-exec")));
