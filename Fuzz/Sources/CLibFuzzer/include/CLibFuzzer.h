#ifndef WEIGHTPACK_CLIBFUZZER_H
#define WEIGHTPACK_CLIBFUZZER_H
#include <stddef.h>
#include <stdint.h>

/// libFuzzer's driver (compiler-rt, FuzzerDriver.cpp): parses the libFuzzer command line in
/// argv and runs callback on every input. Linked in by -sanitize=fuzzer.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
