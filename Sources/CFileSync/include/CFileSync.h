// File system calls the Swift Glibc module does not import (they need _GNU_SOURCE).
#pragma once
#include <stdint.h>

// Starts writing `length` bytes of `fd` from `offset` back to the disk without waiting for them
// (Linux `sync_file_range` with `SYNC_FILE_RANGE_WRITE`). Returns 0, or -1 with `errno` set; on
// systems without the call, -1 and nothing done. Durability is not promised: only `fsync` does.
int wp_start_write_back(int fd, int64_t offset, int64_t length);
