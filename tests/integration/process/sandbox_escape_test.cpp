// The escape suite: hostile process tasks run by the real ProcessIsolator
// with its default sandbox, each trying what an attacker would. Each attempt
// must fail or see nothing. The test process plays the runner: its pid, its
// files, its sockets are what a task must not reach.
//
// Run as root (CI) and as an unprivileged user, which takes the user
// namespace path (ctest: it_process_unprivileged, see tests/CMakeLists.txt):
//   setpriv --reuid=nobody --regid=nogroup --clear-groups build/asan/tests/it_process "[escape]"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <stop_token>
#include <thread>

#include "isolation/process/process_isolator.h"
#include "tests/integration/process/capture.h"
#include "tests/support/services.h"

namespace runner::isolation::process {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Kind = RunResult::Kind;

ProcessIsolatorOptions Options(const testing::TempDir& dir) {
  ProcessIsolatorOptions o;
  o.work_root = dir.path() / "data" / "work";
  o.cgroup_parent = "runner-it-escape";
  o.sample_interval = 100ms;
  o.stop_grace = 500ms;
  // ctest it_process_prebuilt: the same tests with pre-built sandboxes.
  if (const char* n = std::getenv("RUNNER_TEST_PREBUILT")) o.prebuilt_sandboxes = std::atoi(n);
  return o;
}

TaskSpec Shell(const std::string& script) {
  static std::atomic<int> n{0};
  TaskSpec spec;
  spec.task_id = "it-escape-" + std::to_string(::getpid()) + "-" + std::to_string(++n);
  spec.worker_id = "w-test";
  spec.command = {"/bin/sh", "-c", script};
  spec.timeout = 20s;
  return spec;
}

struct Ran {
  RunResult result;
  std::string out, err;
};

Ran RunTask(ProcessIsolator& iso, TaskSpec spec) {
  Capture cap;
  RunResult r = iso.Run(spec, cap, {});
  INFO("stderr: " << cap.err());
  return {r, cap.out(), cap.err()};
}

// Each line "<name> <result>": the attempts of one script.
std::string Attempt(ProcessIsolator& iso, const std::string& script) {
  Ran ran = RunTask(iso, Shell(script));
  UNSCOPED_INFO("script: " << script << "\nstdout: " << ran.out << "\nstderr: " << ran.err);
  return ran.out;
}

// A listening TCP socket on 127.0.0.1 of the host's network (the runner's API).
struct Listener {
  int fd = -1;
  int port = 0;
  Listener() {
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    ::listen(fd, 8);
    socklen_t len = sizeof(a);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
  }
  ~Listener() { ::close(fd); }
};

// A unix socket (a file one, like PostgreSQL's, and an abstract one).
struct UnixListener {
  int fd = -1;
  explicit UnixListener(const std::string& path, bool abstract) {
    fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path + (abstract ? 1 : 0), path.data(), path.size());
    ::bind(
        fd, reinterpret_cast<sockaddr*>(&a),
        static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + (abstract ? 1 : 0)));
    ::listen(fd, 8);
  }
  ~UnixListener() { ::close(fd); }
};

}  // namespace

TEST_CASE("a process task runs unprivileged with no capabilities and a seccomp filter",
          "[process][sandbox][escape]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  REQUIRE(iso.sandbox().usable());
  std::string out = Attempt(iso,
                            "echo uid=$(id -u) gid=$(id -g); grep -E "
                            "'^(CapEff|CapBnd|CapPrm|NoNewPrivs|Seccomp):' /proc/self/status; "
                            "hostname");
  CHECK_THAT(out, Catch::Contains("uid=65534 gid=65534"));
  CHECK_THAT(out, Catch::Contains("CapEff:\t0000000000000000"));
  CHECK_THAT(out, Catch::Contains("CapPrm:\t0000000000000000"));
  CHECK_THAT(out, Catch::Contains("CapBnd:\t0000000000000000"));
  CHECK_THAT(out, Catch::Contains("NoNewPrivs:\t1"));
  CHECK_THAT(out, Catch::Contains("Seccomp:\t2"));
  CHECK_THAT(out, Catch::Contains("runner-task"));
}

TEST_CASE("a process task cannot read secrets or write the system", "[process][sandbox][escape]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  const std::string data = (dir.path() / "data").string();
  std::string out =
      Attempt(iso,
              "cat /etc/shadow >/dev/null 2>&1 && echo shadow-read; "
              "touch /usr/local/bin/evil 2>/dev/null && echo usr-written; "
              "touch /etc/evil 2>/dev/null && echo etc-written; "
              "ls " +
                  data +
                  " >/dev/null 2>&1 && echo datadir-listed; "
                  "ls /root /home /var /run 2>/dev/null | grep -q . && echo host-dirs-seen; "
                  "test -e /var/run/docker.sock && echo docker-sock; "
                  "echo done");
  CHECK(out == "done\n");
  CHECK_FALSE(fs::exists("/usr/local/bin/evil"));
  CHECK_FALSE(fs::exists("/etc/evil"));
}

TEST_CASE("a process task reaches no socket of the host", "[process][sandbox][escape]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  Listener api;
  const std::string sock = (dir.path() / "pg.sock").string();
  UnixListener pg(sock, false);
  const std::string abstract = "runner-it-escape-" + std::to_string(::getpid());
  UnixListener hidden(abstract, true);
  std::string script =
      "import socket\n"
      "def tcp():\n"
      "  s = socket.create_connection(('127.0.0.1', " +
      std::to_string(api.port) +
      "), timeout=2)\n"
      "def unix(addr):\n"
      "  s = socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect(addr)\n"
      "for name, f in [('api', tcp), ('pg', lambda: unix('" +
      sock + "')), ('abstract', lambda: unix('\\0" + abstract +
      "')), ('docker', lambda: unix('/var/run/docker.sock'))]:\n"
      "  try:\n"
      "    f(); print(name, 'connected')\n"
      "  except OSError as e:\n"
      "    print(name, 'refused')\n"
      "print(open('/proc/net/dev').read().count(':'), 'interfaces')\n";
  TaskSpec spec = Shell("");
  spec.command = {"/usr/bin/python3", "-c", script};
  Ran ran = RunTask(iso, spec);
  INFO(ran.err);
  CHECK(ran.out == "api refused\npg refused\nabstract refused\ndocker refused\n1 interfaces\n");
}

TEST_CASE("a process task sees only its own processes and cannot touch the runner",
          "[process][sandbox][escape]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  const std::string me = std::to_string(::getpid());
  // A stand-in for the runner to SIGSTOP: were the sandbox broken, the test
  // must not stop itself (nor signal the host's pid 1).
  pid_t helper = ::fork();
  REQUIRE(helper >= 0);
  if (helper == 0) {
    ::execl("/bin/sleep", "sleep", "60", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  struct Reap {
    pid_t pid;
    ~Reap() {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  } reap{helper};
  const std::string other = std::to_string(helper);
  std::string out = Attempt(iso,
                            "ls -d /proc/[0-9]* | wc -l | tr -d ' '; "
                            "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' | "
                            "grep -q 'it_[p]rocess' && echo runner-visible; "
                            "kill -0 " +
                                me +
                                " 2>/dev/null && echo kill0; "
                                "kill -STOP " +
                                other +
                                " 2>/dev/null && echo stopped; "
                                "echo done");
  std::ifstream stat("/proc/" + other + "/stat");
  std::string helper_stat((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  CHECK(helper_stat.find(") T ") == std::string::npos);
  // sh, ls (or wc), and the init: a handful, not the host's hundreds.
  CHECK(std::stoi(out) <= 6);
  CHECK_THAT(out, Catch::EndsWith("done\n"));
  CHECK_THAT(out, !Catch::Contains("runner-visible"));
  CHECK_THAT(out, !Catch::Contains("kill0"));
  CHECK_THAT(out, !Catch::Contains("stopped"));

  std::string script =
      "import ctypes, os\n"
      "libc = ctypes.CDLL(None, use_errno=True)\n"
      "for pid in (" +
      me +
      ", 1):\n"
      "  r = libc.ptrace(16, pid, 0, 0)\n"  // PTRACE_ATTACH
      "  print('ptrace', 'ok' if r == 0 else os.strerror(ctypes.get_errno()))\n";
  TaskSpec spec = Shell("");
  spec.command = {"/usr/bin/python3", "-c", script};
  Ran ran = RunTask(iso, spec);
  CHECK_THAT(ran.out, !Catch::Contains("ptrace ok"));
  CHECK_THAT(ran.out, Catch::Contains("ptrace"));
}

TEST_CASE("a process task cannot mount or make namespaces: the calls fail, the task goes on",
          "[process][sandbox][escape]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  std::string out = Attempt(iso,
                            "mkdir -p /tmp/m; mount -t tmpfs none /tmp/m 2>/dev/null && echo "
                            "mounted; unshare -U true 2>/dev/null && echo unshared; "
                            "unshare -n true 2>/dev/null && echo netns; echo alive");
  CHECK(out == "alive\n");
}

TEST_CASE("a process task sees neither another task's work dir nor its environment",
          "[process][sandbox][escape]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  std::stop_source stop_victim;
  TaskSpec victim = Shell("echo topsecret > secret.txt; sleep 30");
  victim.env["VICTIM_TOKEN"] = "tok-98122";
  std::jthread victim_thread([&] {
    Capture cap;
    iso.Run(victim, cap, stop_victim.get_token());
  });
  fs::path work = dir.path() / "data" / "work";
  fs::path victim_dir;
  REQUIRE(testing::WaitFor(
      [&] {
        for (const auto& e : fs::directory_iterator(work)) {
          if (fs::exists(e.path() / "secret.txt")) victim_dir = e.path();
        }
        return !victim_dir.empty();
      },
      10s));
  std::string out = Attempt(iso, "cat " + victim_dir.string() +
                                     "/secret.txt 2>/dev/null; "
                                     "cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | grep "
                                     "VICTIM_TOKEN; ls /work/.. ; echo done");
  stop_victim.request_stop();
  CHECK_THAT(out, !Catch::Contains("topsecret"));
  CHECK_THAT(out, !Catch::Contains("tok-98122"));
  CHECK_THAT(out, Catch::EndsWith("done\n"));
}

TEST_CASE("what a process task writes to /tmp and /dev/shm stays out of the host's",
          "[process][sandbox][escape]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  const std::string name = "runner-escape-" + std::to_string(::getpid());
  std::string out = Attempt(iso, "echo x > /tmp/" + name + " && echo x > /dev/shm/" + name +
                                     " && cat /tmp/" + name + " && echo done");
  CHECK(out == "x\ndone\n");
  CHECK_FALSE(fs::exists("/tmp/" + name));
  CHECK_FALSE(fs::exists("/dev/shm/" + name));
}

TEST_CASE("the disk limit holds across /tmp and /work together", "[process][sandbox][escape]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  TaskSpec spec = Shell(
      "dd if=/dev/zero of=/tmp/a bs=1M count=6 2>/dev/null && echo tmp-ok; "
      "dd if=/dev/zero of=/work/b bs=1M count=6 2>/dev/null && echo work-ok; sleep 1; echo end");
  spec.limits.disk = 10 << 20;
  Ran ran = RunTask(iso, spec);
  INFO("kind " << static_cast<int>(ran.result.kind) << " out " << ran.out);
  if (::geteuid() == 0) {
    // One tmpfs of the limit holds both: the second write fails.
    CHECK_THAT(ran.out, !Catch::Contains("work-ok"));
  } else {
    // No tmpfs without root: the sampler stops the task once it is over.
    CHECK(ran.result.kind == Kind::kOverLimit);
    CHECK_THAT(ran.out, !Catch::Contains("end"));
  }
}

TEST_CASE("ordinary shell work runs in the sandbox and orphans are reaped",
          "[process][sandbox][escape]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  std::string out = Attempt(
      iso,
      "cd /tmp && echo hello world | tr a-z A-Z > up.txt && cat up.txt | wc -w | tr -d ' '; "
      "pwd; cd; pwd; echo $HOME $TMPDIR; "
      // Three orphans exit at once; pid 1 must reap them.
      "(true &); (true &); (true &); sleep 0.3; "
      "grep -h '^State:' /proc/[0-9]*/status | grep -c zombie");
  CHECK(out == "2\n/tmp\n/work\n/work /tmp\n0\n");
}

TEST_CASE("a task killed by its timeout takes its whole process tree with it in the sandbox",
          "[process][sandbox][escape]") {
  testing::TempDir dir;
  ProcessIsolator iso(Options(dir));
  TaskSpec spec = Shell("setsid sleep 976001 & (trap '' TERM; sleep 976002) & sleep 976003");
  spec.timeout = 500ms;
  Ran ran = RunTask(iso, spec);
  CHECK(ran.result.kind == Kind::kTimedOut);
  // Nothing of it is left on the host.
  std::string ps;
  for (const auto& e : fs::directory_iterator("/proc")) {
    int fd = ::open((e.path() / "cmdline").c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    char buf[512];
    ssize_t n = ::read(fd, buf, sizeof(buf));  // fails for a process that just left
    ::close(fd);
    std::string line(buf, n > 0 ? static_cast<size_t>(n) : 0);
    if (line.find("97600") != std::string::npos) ps += line + "\n";
  }
  CHECK(ps.empty());
}

TEST_CASE("with --process-sandbox off a task runs bare, as the runner's user, and it is logged",
          "[process][sandbox][off]") {
  testing::TempDir dir;
  ProcessIsolatorOptions o = Options(dir);
  o.sandbox.enabled = false;
  auto logs = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(64);
  spdlog::default_logger()->sinks().push_back(logs);
  ProcessIsolator iso(o);
  spdlog::default_logger()->sinks().pop_back();
  std::string logged;
  for (const std::string& line : logs->last_formatted()) logged += line;
  CHECK_THAT(logged, Catch::Contains("sandbox is OFF"));
  CHECK_FALSE(iso.sandbox().enabled());
  CHECK(iso.sandbox().Describe() == "off");
  std::string out = Attempt(iso,
                            "id -u; test -d /proc/1/ && cat /proc/1/cmdline | head -c 64 | "
                            "tr '\\0' ' ' | grep -qv runner-task-init && echo host-pid1");
  CHECK_THAT(out, Catch::StartsWith(std::to_string(::geteuid()) + "\n"));
  CHECK_THAT(out, Catch::Contains("host-pid1"));
}

}  // namespace runner::isolation::process

namespace runner::isolation::process {

// ThreadSanitizer builds start every task with fork() (no clone3): the child
// then creates the namespaces itself and runs the init as its own child.
TEST_CASE("the sandbox is the same when the task is started by a plain fork",
          "[process][sandbox][fork]") {
  testing::TempDir dir;
  ProcessIsolatorOptions o = Options(dir);
  o.use_cgroups = false;  // no cgroup to clone into, no shared memory: fork()
  o.shared_memory_spawn = false;
  ProcessIsolator iso(o);
  std::string out = Attempt(iso,
                            "id -u; hostname; grep -c . /proc/net/dev; "
                            "grep '^Seccomp:' /proc/self/status; ls -d /proc/[0-9]* | wc -l");
  // Two header lines and lo in /proc/net/dev; a handful of processes.
  CHECK_THAT(out, Catch::StartsWith("65534\nrunner-task\n3\nSeccomp:\t2\n"));
  CHECK(std::stoi(out.substr(out.rfind('\n', out.size() - 2) + 1)) <= 6);
  TaskSpec spec = Shell("(trap '' TERM; sleep 976101) & sleep 976102");
  spec.timeout = 300ms;
  Ran ran = RunTask(iso, spec);
  CHECK(ran.result.kind == Kind::kTimedOut);
  bool left = false;
  for (const auto& e : fs::directory_iterator("/proc")) {
    int fd = ::open((e.path() / "cmdline").c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    char buf[256];
    ssize_t n = ::read(fd, buf, sizeof(buf));
    ::close(fd);
    if (n > 0 && std::string(buf, static_cast<size_t>(n)).find("97610") != std::string::npos) {
      left = true;
    }
  }
  CHECK_FALSE(left);
}

}  // namespace runner::isolation::process
