// The `runner` binary: wiring only (STYLE.md). Commands are defined in
// runner/cli/ (serve, submit, status, ...).
#include <cstdio>

int main(int argc, char** argv) {
  (void)argc;
  (void)argv;
  std::fputs("runner: not wired yet\n", stderr);
  return 1;
}
