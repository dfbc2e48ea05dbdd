/* Hot-path benchmark: N malloc+free pairs of varying small sizes.
 * Prints "ns_per_pair <value>" (process CPU time, so other load on the machine matters less). Build: gcc -O2 -fno-builtin -o malloc_loop malloc_loop.c */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static void *volatile sink;

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 20000000;
  struct timespec a, b;
  /* warm up */
  for (long i = 0; i < 100000; i++) { void *p = malloc(16 + (i & 255)); sink = p; free(p); }
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a);
  for (long i = 0; i < n; i++) {
    void *p = malloc(16 + (i & 255));
    sink = p;
    free(p);
  }
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b);
  double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
  printf("ns_per_pair %.3f\n", ns / n);
  return 0;
}
