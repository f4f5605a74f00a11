#include "process_shim.h"
#include <unistd.h>

int cshims_fork(void) { return fork(); }
