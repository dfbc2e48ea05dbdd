/* 5,000 mappings (alternating protections so that none merge), each
 * touched, then idle: the RSS ledger's smaps read at its worst case. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 5000;
  for (int i = 0; i < n; i++) {
    char *p = mmap(0, 16384, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 1;
    memset(p, 1, 16384);
    if (i % 2) mprotect(p, 16384, PROT_READ);
  }
  sleep(argc > 2 ? atoi(argv[2]) : 20);
  return 0;
}
