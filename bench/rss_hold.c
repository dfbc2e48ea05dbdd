/* Agent memory benchmark: allocate ~200 MB in mixed sizes, keep half, report peak RSS (kB). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
int main(void) {
  enum { N = 400000 };
  static void *keep[N];
  for (int i = 0; i < N; i++) {
    size_t n = 64 + (i * 37) % 1000;
    keep[i] = malloc(n);
    memset(keep[i], 1, n);
    if (i % 2) { free(keep[i]); keep[i] = 0; }
  }
  for (int r = 0; r < 20; r++)
    for (int i = 0; i < N; i += 2) { free(keep[i]); size_t n = 64 + (i * 37 + r) % 1000; keep[i] = malloc(n); memset(keep[i], 2, n); }
  struct rusage ru; getrusage(RUSAGE_SELF, &ru);
  printf("maxrss_kb %ld\n", ru.ru_maxrss);
  return 0;
}
