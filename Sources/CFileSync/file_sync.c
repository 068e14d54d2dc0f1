#define _GNU_SOURCE
#include "CFileSync.h"

#include <errno.h>
#include <fcntl.h>

int wp_start_write_back(int fd, int64_t offset, int64_t length) {
    if (offset < 0 || length <= 0) {
        errno = EINVAL;
        return -1;
    }
#if defined(__linux__)
    return sync_file_range(fd, (off_t)offset, (off_t)length, SYNC_FILE_RANGE_WRITE);
#else
    (void)fd;
    errno = ENOSYS;
    return -1;
#endif
}
